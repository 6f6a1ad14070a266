"""Storage settings: S3 endpoints, buckets, limits and timeouts; inputs by https URL. Composed into the
worker's `Settings`."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

# Bucket names an S3-compatible endpoint of our own (moto, MinIO) gets when none are configured. On AWS
# bucket names are global: a default there could be someone else's bucket, so AWS needs explicit names.
LOCAL_INPUT_BUCKET = "klein-edit-inputs"
LOCAL_OUTPUT_BUCKET = "klein-edit-outputs"


class S3Settings(BaseModel):
    """Where images come from and go to. Credentials default to boto3's chain (`AWS_*`, IRSA, ...).

    `input_bucket` and `output_bucket` are required on AWS (`endpoint_url` unset); with an endpoint of
    your own they default to `klein-edit-inputs` and `klein-edit-outputs`.
    """

    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; None means AWS.")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = Field(default=None, description="Overrides the boto3 credential chain.")
    secret_access_key: SecretStr | None = None
    input_bucket: str = Field(
        description="Bucket for bare input keys and `submit` uploads. Required on AWS; "
        f"'{LOCAL_INPUT_BUCKET}' with an endpoint_url."
    )
    allowed_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets inputs may be read from, besides the input bucket. "
        "Empty: only the input bucket.",
    )
    adapter_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets LoRA adapters (request `loras`) may be read from; a bare adapter key names an "
        "object in the first one. Empty: requests with adapters fail with INPUT_FORBIDDEN.",
    )
    max_adapter_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Largest adapter file read (bytes); a larger one fails with INVALID_ADAPTER.",
    )
    presign_ttl_s: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        description="Lifetime (seconds) of the presigned GET link a result carries in output.url; 0 (the "
        "default) gives no link. Signed locally: no extra request to S3.",
    )
    output_bucket: str = Field(
        description="Bucket every output is written to (and nothing else). Required on AWS; "
        f"'{LOCAL_OUTPUT_BUCKET}' with an endpoint_url."
    )
    output_prefix: str = Field(default="edits/", description="Every output key starts with this prefix.")
    state_prefix: str = Field(
        default="klein-edit-state/",
        description="Prefix in the output bucket for the worker's own state (attempt ledger); "
        "outputs may not be written under it.",
    )
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1, description="Largest input object fetched.")
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="botocore attempts per call (standard mode).")
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "path"

    @model_validator(mode="before")
    @classmethod
    def _local_bucket_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("endpoint_url"):
            return {"input_bucket": LOCAL_INPUT_BUCKET, "output_bucket": LOCAL_OUTPUT_BUCKET, **data}
        return data

    @property
    def readable_buckets(self) -> frozenset[str]:
        return frozenset([self.input_bucket, *self.allowed_buckets])


class UrlInputSettings(BaseModel):
    """Inputs and LoRA adapters by https URL (a CDN, a presigned link): off unless `enabled`.

    A URL is read only when its host is in `allowed_hosts` and every address that host resolves to is
    public (or inside `allowed_private_networks`); see README.md, "Inputs by URL: the SSRF model".
    """

    enabled: bool = Field(
        default=False,
        description="Accept https:// URLs in image, references and loras[].uri. Off: such a request "
        "fails with INPUT_FORBIDDEN.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts URLs may name: exact names ('cdn.example.com') or '*.suffix' for any name under "
        "a suffix ('*.cloudfront.net' matches 'd1.cloudfront.net', not 'cloudfront.net'). Required when "
        "enabled. Redirects are followed only to these hosts.",
    )
    allowed_private_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs a host may resolve into although not public (an on-premises CDN, e.g. "
        "'10.20.0.0/16'). Empty: loopback, private, link-local, multicast, reserved and shared addresses "
        "are refused. Cloud metadata addresses are refused whatever this says.",
    )
    max_redirects: int = Field(
        default=3, ge=0, le=10, description="Redirects followed per read; each target is checked again."
    )
    connect_timeout_s: float = Field(
        default=3.0, gt=0, description="Seconds to connect, TLS handshake included."
    )
    read_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds the server may stay silent: before the headers, between reads.",
    )
    total_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds one read may take in all, redirects included (a 1 GiB adapter at 4 MB/s).",
    )
    ca_bundle: str | None = Field(
        default=None,
        description="PEM file of the certificate authorities to trust (a private CA); None: the system's "
        "trust store.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str]) -> list[str]:
        patterns = []
        for raw in value:
            pattern = raw.strip().lower().rstrip(".")
            name = pattern.removeprefix("*.")
            if not name or not _HOST_PATTERN.fullmatch(name) or "*" in name:
                raise ValueError(
                    f"{raw!r} is not a host name, an IP address or '*.suffix' (no scheme, port or path)"
                )
            patterns.append(pattern)
        return patterns

    @field_validator("allowed_private_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network, e.g. '10.0.0.0/8' or 'fd00::/8'") from exc
        return value

    @model_validator(mode="after")
    def _hosts_when_enabled(self) -> UrlInputSettings:
        if self.enabled and not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: list the hosts URLs may name, or leave URL inputs off")
        return self


# A DNS name (letters, digits, '-', dots) or an IP literal (IPv6 without brackets).
_HOST_PATTERN = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.|$))+$|^[0-9a-f:.]+$")

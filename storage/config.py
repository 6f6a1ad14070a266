"""S3 settings: endpoints, buckets, limits and timeouts. Composed into the worker's `Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class S3Settings(BaseModel):
    """Where images come from and go to. Credentials default to boto3's chain (`AWS_*`, IRSA, ...)."""

    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; None means AWS.")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = Field(default=None, description="Overrides the boto3 credential chain.")
    secret_access_key: SecretStr | None = None
    input_bucket: str = Field(default="klein-edit-inputs", description="Bucket for bare input keys.")
    allowed_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets inputs may be read from, besides the input bucket. "
        "Empty: only the input bucket.",
    )
    output_bucket: str = "klein-edit-outputs"
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

    @property
    def readable_buckets(self) -> frozenset[str]:
        return frozenset([self.input_bucket, *self.allowed_buckets])

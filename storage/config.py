"""S3 settings: endpoints, buckets, limits and timeouts. Composed into the worker's `Settings`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

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

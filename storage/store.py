"""The worker's S3 access: bounded input reads and idempotent output writes.

`ImageStore` wraps one boto3 client (thread-safe once built, so one store serves every job thread).
All botocore exceptions are translated to `storage.errors` here, at the boundary.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage._boundary import client_error_code, client_error_status, input_error, output_error
from storage.config import S3Settings
from storage.errors import AdapterRefused, InputTooLarge, StorageError, StorageUnavailable
from storage.locations import S3Location

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CreateBucketConfigurationTypeDef

SHA256_METADATA_KEY = "sha256"
# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_CONTENT_RANGE_TOTAL = re.compile(r"^bytes \d+-\d+/(\d+)$")
# Header-safe metadata: S3 keeps user metadata in HTTP headers, which botocore restricts to ASCII.
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class StoredObject:
    """An object as S3 reports it (HEAD); `sha256` comes from our own user metadata when present."""

    location: S3Location
    size: int
    sha256: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class PutOutcome:
    """Result of a conditional put.

    `created=False`: the key already existed and was left untouched; `existing` describes it (None if
    it vanished before the HEAD). The existing object may be our own: when a put succeeded but its
    answer was lost, botocore's retry is refused with 412, so compare `existing.sha256` rather than
    assuming another worker wrote it.
    """

    created: bool
    existing: StoredObject | None = None


@dataclass(frozen=True)
class ObjectVersion:
    """What a HEAD says about an input object: its size and ETag (which changes with its content)."""

    location: S3Location
    size: int
    etag: str


@dataclass(frozen=True)
class FetchedObject:
    data: bytes
    etag: str


class ImageStore:
    """Reads request inputs and writes outputs in S3, with explicit timeouts and typed errors."""

    def __init__(self, settings: S3Settings, client: S3Client | None = None) -> None:
        self._settings = settings
        self._client = client if client is not None else build_client(settings)

    @property
    def settings(self) -> S3Settings:
        return self._settings

    @property
    def client(self) -> S3Client:
        return self._client

    def __repr__(self) -> str:
        settings = self._settings
        return f"ImageStore(input_bucket={settings.input_bucket!r}, output_bucket={settings.output_bucket!r})"

    def fetch(self, location: S3Location) -> bytes:
        """Download an input; one over `max_image_bytes` raises `InputTooLarge` before its body is read."""
        return self._read(location, self._settings.max_image_bytes, InputTooLarge).data

    def describe_adapter(self, location: S3Location) -> ObjectVersion:
        """HEAD an adapter: its size and ETag, so a cached copy can be reused without reading it again.

        Raises `AdapterRefused` over `max_adapter_bytes`, `InputNotFound`, `InputForbidden` or
        `StorageUnavailable` as for inputs.
        """
        try:
            response = self._client.head_object(Bucket=location.bucket, Key=location.key)
        except (ClientError, BotoCoreError) as exc:
            raise input_error(exc, location.uri, "read") from exc
        size = int(response.get("ContentLength", 0))
        limit = self._settings.max_adapter_bytes
        if size > limit:
            raise AdapterRefused(f"{location.uri} is {size} bytes, over the adapter limit of {limit} bytes")
        return ObjectVersion(location=location, size=size, etag=str(response.get("ETag", "")))

    def fetch_adapter(self, location: S3Location) -> FetchedObject:
        """Download an adapter file (at most `max_adapter_bytes`, else `AdapterRefused`) with its ETag."""
        return self._read(location, self._settings.max_adapter_bytes, AdapterRefused)

    def _read(self, location: S3Location, limit: int, too_large: type[StorageError]) -> FetchedObject:
        """One ranged GET for at most `limit + 1` bytes; the total size from Content-Range
        (Content-Length when a server ignores Range) decides before the body is touched, which saves
        a HEAD round trip per object. An object over `limit` raises `too_large`.
        """
        try:
            response = self._client.get_object(
                Bucket=location.bucket, Key=location.key, Range=f"bytes=0-{limit}"
            )
        except ClientError as exc:
            # S3 answers 416 for any range on an empty object; our range starts at 0, so nothing else
            # can cause it.
            if client_error_code(exc) == "InvalidRange" or client_error_status(exc) == 416:
                return FetchedObject(data=b"", etag="")
            raise input_error(exc, location.uri, "read") from exc
        except BotoCoreError as exc:
            raise input_error(exc, location.uri, "read") from exc
        body = response["Body"]
        try:
            total = _total_size(response.get("ContentRange"), response.get("ContentLength"))
            if total is not None and total > limit:
                raise too_large(f"{location.uri} is {total} bytes, over the limit of {limit} bytes")
            data = body.read(limit + 1)
        except (BotoCoreError, OSError) as exc:
            raise input_error(exc, location.uri, "read") from exc
        finally:
            body.close()
        if len(data) > limit:
            raise too_large(f"{location.uri} is over the limit of {limit} bytes")
        if total is not None and len(data) != total:
            raise StorageUnavailable(f"cannot read {location.uri}: got {len(data)} of {total} bytes")
        return FetchedObject(data=data, etag=str(response.get("ETag", "")))

    def find_output(self, location: S3Location) -> StoredObject | None:
        """HEAD an output: its description, or None when there is none yet."""
        try:
            response = self._client.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as exc:
            # HEAD has no body, so a missing key and a missing bucket both arrive as a bare 404; a
            # missing bucket surfaces on the following put.
            if client_error_status(exc) == 404:
                return None
            raise output_error(exc, location.uri, "look up") from exc
        except BotoCoreError as exc:
            raise output_error(exc, location.uri, "look up") from exc
        metadata = dict(response.get("Metadata", {}))
        return StoredObject(
            location=location,
            size=int(response.get("ContentLength", 0)),
            sha256=metadata.get(SHA256_METADATA_KEY),
            metadata=metadata,
            content_type=response.get("ContentType"),
        )

    def put_output(
        self, location: S3Location, data: bytes, *, content_type: str, metadata: dict[str, str]
    ) -> PutOutcome:
        """Write an output only if its key is free (`If-None-Match: *`).

        Two workers racing on one request (a redelivery during a rebalance) then leave exactly one
        object, and the loser learns what is there. `metadata` must be ASCII (S3 user metadata is
        sent as HTTP headers); the hex SHA-256 of `data` is added as "sha256", overriding any value
        given. Errors: `StorageUnavailable` for transient faults and for a missing or forbidden output
        bucket (a deployment fault, so the request is kept for a retry), `StorageError` otherwise.
        """
        digest = hashlib.sha256(data)
        stored_metadata = {**_checked_metadata(metadata), SHA256_METADATA_KEY: digest.hexdigest()}
        try:
            self._upload(
                location,
                data,
                content_type=content_type,
                sha256=digest.digest(),
                Metadata=stored_metadata,
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if client_error_code(exc) == "PreconditionFailed" or client_error_status(exc) == 412:
                return PutOutcome(created=False, existing=self.find_output(location))
            raise output_error(exc, location.uri, "write") from exc
        except BotoCoreError as exc:
            raise output_error(exc, location.uri, "write") from exc
        return PutOutcome(created=True, existing=None)

    def put_object(self, location: S3Location, data: bytes, *, content_type: str) -> None:
        """Plain (overwriting) upload; stages input images for the demo and `submit`."""
        try:
            self._upload(location, data, content_type=content_type, sha256=hashlib.sha256(data).digest())
        except (ClientError, BotoCoreError) as exc:
            raise output_error(exc, location.uri, "write") from exc

    def _upload(
        self, location: S3Location, data: bytes, *, content_type: str, sha256: bytes, **conditions: Any
    ) -> None:
        """PUT with an end-to-end SHA-256 checksum (S3 rejects a corrupted body) and the configured SSE."""
        self._client.put_object(
            Bucket=location.bucket,
            Key=location.key,
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=base64.b64encode(sha256).decode("ascii"),
            **encryption_args(self._settings),
            **conditions,
        )

    def bucket_exists(self, bucket: str) -> bool:
        """Whether `bucket` exists (HEAD bucket: 404 is False). Raises `StorageError` for any other
        answer, e.g. `StorageUnavailable` when S3 cannot be reached or the credentials are refused."""
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if client_error_status(exc) == 404:
                return False
            raise output_error(exc, f"s3://{bucket}", "look up") from exc
        except BotoCoreError as exc:
            raise output_error(exc, f"s3://{bucket}", "look up") from exc
        return True

    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` unless it exists (demo and tests; production buckets come from infrastructure)."""
        target = f"s3://{bucket}"
        try:
            self._client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if client_error_status(exc) != 404:
                raise output_error(exc, target, "look up") from exc
        except BotoCoreError as exc:
            raise output_error(exc, target, "look up") from exc
        try:
            if self._settings.region == "us-east-1":
                self._client.create_bucket(Bucket=bucket)
            else:
                self._client.create_bucket(
                    Bucket=bucket,
                    # The stubs list known regions as literals; S3-compatible servers use others.
                    CreateBucketConfiguration=cast(
                        "CreateBucketConfigurationTypeDef", {"LocationConstraint": self._settings.region}
                    ),
                )
        except ClientError as exc:
            # Lost a creation race with another process: the bucket exists, which is all we want.
            if client_error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise output_error(exc, target, "create") from exc
        except BotoCoreError as exc:
            raise output_error(exc, target, "create") from exc

    def presign(self, location: S3Location, expires_s: int = 3600) -> str:
        """A presigned GET URL (signed locally; no request is made)."""
        if not 1 <= expires_s <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_SECONDS}, got {expires_s}")
        try:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": location.bucket, "Key": location.key}, ExpiresIn=expires_s
            )
        except (ClientError, BotoCoreError) as exc:
            raise output_error(exc, location.uri, "presign") from exc


def build_client(settings: S3Settings) -> S3Client:
    """A boto3 S3 client with explicit timeouts and retries.

    botocore's defaults (60 s connect and read timeouts, 3 attempts) let one hung call stall a job
    for about three minutes. A fresh `Session` is used because the default session is not safe to
    share while threads create clients.
    """
    if (settings.access_key_id is None) != (settings.secret_access_key is None):
        raise ValueError("S3Settings.access_key_id and secret_access_key must be set together")
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        s3={"addressing_style": settings.addressing_style},
        signature_version="s3v4",
    )
    # None for both falls back to boto3's credential chain (environment, IRSA, instance profile).
    access_key = settings.access_key_id.get_secret_value() if settings.access_key_id else None
    secret_key = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def encryption_args(settings: S3Settings) -> dict[str, Any]:
    """PutObject arguments for the configured server-side encryption (empty when none)."""
    args: dict[str, Any] = {}
    if settings.server_side_encryption is not None:
        args["ServerSideEncryption"] = settings.server_side_encryption
        if settings.server_side_encryption == "aws:kms" and settings.sse_kms_key_id:
            args["SSEKMSKeyId"] = settings.sse_kms_key_id
    return args


def _total_size(content_range: str | None, content_length: int | None) -> int | None:
    if content_range:
        match = _CONTENT_RANGE_TOTAL.match(content_range)
        if match:
            return int(match.group(1))
        return None
    # No Content-Range: the server ignored Range and sends the whole object.
    return content_length


def _checked_metadata(metadata: dict[str, str]) -> dict[str, str]:
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            raise ValueError(f"metadata key {key!r} must be 1-128 characters of A-Za-z0-9_-")
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata value for {key!r} must be printable ASCII (S3 sends it as a header)")
    return {key.lower(): value for key, value in metadata.items()}


__all__ = [
    "FetchedObject",
    "ImageStore",
    "ObjectVersion",
    "PutOutcome",
    "StoredObject",
    "build_client",
    "encryption_args",
]

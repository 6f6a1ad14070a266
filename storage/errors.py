"""Typed storage errors: what went wrong with which object, and whether trying again can help.

Every botocore/boto3 exception is translated into one of these at the boundary (`storage._boundary`),
so callers decide what to do from `code` and `retryable` alone and never import botocore.
"""

from __future__ import annotations

from schemas.errors import ErrorCode, KleinEditError


class StorageError(KleinEditError):
    """Base of the storage errors; used as is only for S3 answers we do not recognise (not retried)."""

    code = ErrorCode.INTERNAL
    retryable = False


class InputNotFound(StorageError):
    """The input key or its bucket does not exist."""

    code = ErrorCode.INPUT_NOT_FOUND


class InputForbidden(StorageError):
    """The worker may not read the input: its bucket is not allowed by settings, or S3 denied access."""

    code = ErrorCode.INPUT_FORBIDDEN


class InputTooLarge(StorageError):
    """The input object is larger than `S3Settings.max_image_bytes`; it was not downloaded."""

    code = ErrorCode.INPUT_TOO_LARGE


class AdapterRefused(StorageError):
    """A LoRA adapter reference the worker will not read: not a `.safetensors` key, or over
    `S3Settings.max_adapter_bytes` (decided from its size, before the body is downloaded)."""

    code = ErrorCode.INVALID_ADAPTER


class InvalidLocation(StorageError):
    """A malformed URI or key, or an output location the worker may not write; names the field."""

    code = ErrorCode.INVALID_EVENT


class StorageUnavailable(StorageError):
    """S3 could not be reached or answered with a transient failure (timeout, 5xx, throttling).

    Also raised for faults of the worker's own environment (rejected credentials, a missing output
    bucket): the request itself is fine, so failing it for good would lose work that succeeds once
    an operator fixes the deployment.
    """

    code = ErrorCode.STORAGE_UNAVAILABLE
    retryable = True

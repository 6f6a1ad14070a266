"""Translation of botocore/boto3 exceptions into the typed storage errors.

Two sides, because the same S3 answer means different things: a missing or forbidden *input* is the
request's fault (final, reported to the producer), while a missing or forbidden *output* bucket is the
worker's deployment at fault (retryable: the request succeeds once an operator fixes it).
Messages carry the S3 error code and the object's URI, never the endpoint URL or credentials.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from storage.errors import InputForbidden, InputNotFound, StorageError, StorageUnavailable

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"})
# Codes that say "try again later" whatever their HTTP status.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        # S3's answer while another conditional write to the same key is in flight.
        "ConditionalRequestConflict",
    }
)
# The worker's credentials are rejected (often a 403): a deployment fault, not the request's.
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def client_error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "") or "")


def client_error_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


_URL_ENCODED_HINT = (
    "; the key contains '+' or '%2B': S3 event notifications URL-encode keys (a space arrives as '+'), "
    "so decode it (urllib.parse.unquote_plus) before putting it in a request"
)


def _looks_url_encoded(target: str) -> bool:
    return "+" in target or "%2b" in target.lower()


def _access_denied(code: str, status: int) -> bool:
    """A 403 about permissions: not rejected credentials, nor a transient answer such as a skewed clock."""
    return status == 403 and code not in CREDENTIAL_CODES and code not in TRANSIENT_CODES


def input_error(exc: Exception, target: str, action: str) -> StorageError:
    """The error for a failed read of a request's input (`action`: e.g. "read")."""
    if isinstance(exc, ClientError):
        code, status = client_error_code(exc), client_error_status(exc)
        if code in NOT_FOUND_CODES or (status == 404 and code not in TRANSIENT_CODES):
            what = "bucket" if code == "NoSuchBucket" else "object"
            return InputNotFound(
                f"cannot {action} {target}: the {what} does not exist ({code or status})"
                + (_URL_ENCODED_HINT if what == "object" and _looks_url_encoded(target) else "")
            )
        if _access_denied(code, status):
            # Without s3:ListBucket, S3 answers 403 instead of 404 for a missing key.
            return InputForbidden(
                f"cannot {action} {target}: access denied ({code or status}; the key may also not exist "
                "if the worker lacks s3:ListBucket)"
            )
    return _common_error(exc, target, action)


def output_error(exc: Exception, target: str, action: str) -> StorageError:
    """The error for a failed write/read of the worker's own objects (outputs, ledger, buckets)."""
    if isinstance(exc, ClientError):
        code, status = client_error_code(exc), client_error_status(exc)
        if code == "NoSuchBucket":
            return StorageUnavailable(
                f"cannot {action} {target}: the bucket does not exist; create it or fix the worker's settings"
            )
        if _access_denied(code, status):
            return StorageUnavailable(
                f"cannot {action} {target}: access denied ({code or status}); the worker's IAM policy "
                "needs s3:GetObject, s3:PutObject and s3:ListBucket on the output bucket"
            )
    return _common_error(exc, target, action)


def _common_error(exc: Exception, target: str, action: str) -> StorageError:
    if isinstance(exc, ClientError):
        code, status = client_error_code(exc), client_error_status(exc)
        if code in CREDENTIAL_CODES:
            return StorageUnavailable(
                f"cannot {action} {target}: S3 rejected the worker's credentials ({code})"
            )
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return StorageUnavailable(f"cannot {action} {target}: S3 is unavailable ({code or status})")
        return StorageError(f"cannot {action} {target}: S3 refused the request ({code or status})")
    if isinstance(exc, ConnectTimeoutError):
        return StorageUnavailable(f"cannot {action} {target}: timed out connecting to S3")
    if isinstance(exc, ReadTimeoutError):
        return StorageUnavailable(f"cannot {action} {target}: S3 did not answer in time (read timeout)")
    if isinstance(exc, EndpointConnectionError | BotoConnectionError):
        return StorageUnavailable(f"cannot {action} {target}: cannot connect to the S3 endpoint")
    if isinstance(exc, ConnectionClosedError | HTTPClientError | IncompleteReadError | OSError):
        return StorageUnavailable(
            f"cannot {action} {target}: the connection to S3 broke ({type(exc).__name__})"
        )
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return StorageUnavailable(
            f"cannot {action} {target}: no usable S3 credentials ({type(exc).__name__})"
        )
    if isinstance(exc, BotoCoreError):
        return StorageError(f"cannot {action} {target}: {type(exc).__name__}")
    return StorageError(f"cannot {action} {target}: unexpected {type(exc).__name__}")

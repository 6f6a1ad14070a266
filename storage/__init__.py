"""S3 access for the worker: input/output locations, bounded reads, idempotent writes, attempt ledger.

Imports only `schemas` from this project; every botocore exception leaves as a `storage.errors` type.
"""

from storage.config import S3Settings
from storage.errors import (
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    InvalidLocation,
    StorageError,
    StorageUnavailable,
)
from storage.ledger import AttemptLedger, LedgerEntry
from storage.locations import S3Location, parse_input_location, resolve_output_location
from storage.store import ImageStore, PutOutcome, StoredObject

__all__ = [
    "AttemptLedger",
    "ImageStore",
    "InputForbidden",
    "InputNotFound",
    "InputTooLarge",
    "InvalidLocation",
    "LedgerEntry",
    "PutOutcome",
    "S3Location",
    "S3Settings",
    "StorageError",
    "StorageUnavailable",
    "StoredObject",
    "parse_input_location",
    "resolve_output_location",
]

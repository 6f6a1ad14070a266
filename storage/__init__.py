"""S3 access for the worker: input/output locations, bounded reads, idempotent writes, attempt ledger.

Imports only `schemas` from this project; every botocore exception leaves as a `storage.errors` type.
"""

from storage.config import S3Settings
from storage.errors import (
    AdapterRefused,
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    InvalidLocation,
    StorageError,
    StorageUnavailable,
)
from storage.ledger import AttemptLedger, LedgerEntry
from storage.locations import (
    S3Location,
    parse_adapter_location,
    parse_input_location,
    resolve_output_location,
)
from storage.store import FetchedObject, ImageStore, ObjectVersion, PutOutcome, StoredObject

__all__ = [
    "AdapterRefused",
    "AttemptLedger",
    "FetchedObject",
    "ImageStore",
    "InputForbidden",
    "InputNotFound",
    "InputTooLarge",
    "InvalidLocation",
    "LedgerEntry",
    "ObjectVersion",
    "PutOutcome",
    "S3Location",
    "S3Settings",
    "StorageError",
    "StorageUnavailable",
    "StoredObject",
    "parse_adapter_location",
    "parse_input_location",
    "resolve_output_location",
]

"""S3 access for the worker: input/output locations, bounded reads, idempotent writes, attempt ledger;
the rules of inputs by https URL (`storage.urls`; the fetcher itself is async, in `consumer.url_fetch`).

Imports only `schemas` from this project; every botocore exception leaves as a `storage.errors` type.
"""

from storage.config import S3Settings, UrlInputSettings
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
    InputLocation,
    S3Location,
    parse_adapter_location,
    parse_adapter_source,
    parse_input_location,
    parse_input_source,
    resolve_output_location,
)
from storage.store import FetchedObject, ImageStore, ObjectVersion, PutOutcome, StoredObject
from storage.urls import METADATA_REFUSAL, AddressPolicy, UrlLocation, host_allowed, redact_url

__all__ = [
    "METADATA_REFUSAL",
    "AdapterRefused",
    "AddressPolicy",
    "AttemptLedger",
    "FetchedObject",
    "ImageStore",
    "InputForbidden",
    "InputLocation",
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
    "UrlInputSettings",
    "UrlLocation",
    "host_allowed",
    "parse_adapter_location",
    "parse_adapter_source",
    "parse_input_location",
    "parse_input_source",
    "redact_url",
    "resolve_output_location",
]

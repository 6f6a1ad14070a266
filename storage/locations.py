"""Input and output locations: parsing request references and deciding where an output may be written.

An input or adapter is an S3 object in an allow-listed bucket, or, where the operator turned URL inputs
on, an https URL on an allow-listed host (`storage.urls`). Everything here is pure (no network). Requests
come from producers we do not control, so a reference is validated before any S3 call: a hostile key must
not reach another bucket, overwrite an input, or land in the worker's own state.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from storage.config import S3Settings, UrlInputSettings
from storage.errors import AdapterRefused, InputForbidden, InvalidLocation
from storage.urls import UrlLocation, parse_url_location

S3_SCHEME = "s3://"
# How safetensors adapters are named: the usual suffix, and BFL's own for its FLUX.2 files.
ADAPTER_EXTENSIONS = (".safetensors", ".sft")
MAX_KEY_BYTES = 1024
OUTPUT_FIELD = "output.uri"

_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EXTENSION_PATTERN = re.compile(r"^[a-z0-9]{1,10}$")


@dataclass(frozen=True)
class S3Location:
    """One object: a bucket and a key. Build it with the functions below, which validate both."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    def __str__(self) -> str:
        return self.uri


# What a request's image, references and loras[].uri may name.
InputLocation = S3Location | UrlLocation
# Schemes that are URLs to the worker: https is read when allowed; http is refused by name (INPUT_FORBIDDEN).
_URL_SCHEMES = ("https://", "http://")


def parse_input_source(ref: str, s3: S3Settings, urls: UrlInputSettings, *, field: str) -> InputLocation:
    """An input reference: an http(s) URL by the URL rules (`storage.urls.parse_url_location`), anything
    else by `parse_input_location`. Raises `InputForbidden` or `InvalidLocation`, naming `field`."""
    if ref[:8].lower().startswith(_URL_SCHEMES):
        return parse_url_location(ref, urls, field=field)
    return parse_input_location(ref, s3, field=field)


def parse_adapter_source(ref: str, s3: S3Settings, urls: UrlInputSettings, *, field: str) -> InputLocation:
    """A LoRA adapter reference: an http(s) URL by the URL rules whose path ends in `.safetensors` or
    `.sft`, anything else by `parse_adapter_location`. Raises `InputForbidden`, `InvalidLocation` or
    `AdapterRefused`, naming `field`."""
    if not ref[:8].lower().startswith(_URL_SCHEMES):
        return parse_adapter_location(ref, s3, field=field)
    location = parse_url_location(ref, urls, field=field)
    if not urlsplit(location.url).path.lower().endswith(ADAPTER_EXTENSIONS):
        raise AdapterRefused(
            f"{field}: {location.uri} is not a {' or '.join(ADAPTER_EXTENSIONS)} file; adapters are read "
            "only as safetensors (pickle-based .bin/.pt/.ckpt files are never loaded)"
        )
    return location


def parse_input_location(ref: str, settings: S3Settings, *, field: str) -> S3Location:
    """Parse an input reference: `s3://bucket/key`, or a bare key in `settings.input_bucket`.

    Raises `InvalidLocation` for a malformed reference and `InputForbidden` when the bucket is not
    one of `settings.readable_buckets`; both messages start with `field` (e.g. "references[2]").
    """
    location = _split(ref, default_bucket=settings.input_bucket, field=field)
    if location.bucket not in settings.readable_buckets:
        raise InputForbidden(
            f"{field}: this worker may not read from bucket '{location.bucket}' ({location.uri})"
        )
    return location


def parse_adapter_location(ref: str, settings: S3Settings, *, field: str) -> S3Location:
    """Parse a LoRA adapter reference: `s3://bucket/key.safetensors` (or `.sft`), or a bare key in the
    first of `settings.adapter_buckets`.

    Raises `InvalidLocation` for a malformed reference, `InputForbidden` when the bucket is not one of
    `settings.adapter_buckets` (or none is configured) and `AdapterRefused` for a key that does not end
    in `.safetensors` or `.sft` (pickle-based formats are never read; the pipeline checks the bytes
    too). Messages start with `field` ("loras[0]").
    """
    allowed = settings.adapter_buckets
    if not allowed and not ref.startswith(S3_SCHEME):
        raise InputForbidden(
            f"{field}: this worker reads no adapters (KLEIN_EDIT_S3__ADAPTER_BUCKETS is empty)"
        )
    location = _split(ref, default_bucket=allowed[0] if allowed else "", field=field)
    if location.bucket not in allowed:
        raise InputForbidden(
            f"{field}: this worker may not read adapters from bucket '{location.bucket}' ({location.uri}); "
            "allowed: KLEIN_EDIT_S3__ADAPTER_BUCKETS"
        )
    if not location.key.lower().endswith(ADAPTER_EXTENSIONS):
        raise AdapterRefused(
            f"{field}: {location.uri} is not a {' or '.join(ADAPTER_EXTENSIONS)} file; adapters are read "
            "only as safetensors (pickle-based .bin/.pt/.ckpt files are never loaded)"
        )
    return location


def resolve_output_location(
    uri: str | None,
    *,
    request_id: str,
    extension: str,
    settings: S3Settings,
    inputs: Sequence[InputLocation],
) -> S3Location:
    """Where the output of one request goes.

    Without `uri`: `output_bucket/output_prefix + request_id + "." + extension`. The key must be a
    function of the request alone: a redelivered request then finds (or races for) the same object,
    which is what makes the sink idempotent.

    With `uri` (`s3://bucket/key` or a bare key in the output bucket) the key is checked so that a
    request cannot write outside the output prefix, over one of its own inputs, or into the state
    prefix. Every violation raises `InvalidLocation` naming "output.uri".
    """
    if uri is None:
        if not _EXTENSION_PATTERN.fullmatch(extension):
            raise InvalidLocation(f"{OUTPUT_FIELD}: invalid output extension {extension!r}")
        _check_key(request_id, field="request_id")
        location = S3Location(settings.output_bucket, f"{settings.output_prefix}{request_id}.{extension}")
        _check_key(location.key, field=OUTPUT_FIELD)
    else:
        location = _split(uri, default_bucket=settings.output_bucket, field=OUTPUT_FIELD)
        if location.bucket != settings.output_bucket:
            raise InvalidLocation(
                f"{OUTPUT_FIELD}: {location.uri} is not in the output bucket '{settings.output_bucket}'"
            )
        if not location.key.startswith(settings.output_prefix):
            raise InvalidLocation(
                f"{OUTPUT_FIELD}: {location.uri} is outside the output prefix '{settings.output_prefix}'"
            )
        if location.key == settings.output_prefix:
            raise InvalidLocation(f"{OUTPUT_FIELD}: {location.uri} names the output prefix, not an object")
        if location in inputs:
            raise InvalidLocation(f"{OUTPUT_FIELD}: {location.uri} is one of the request's inputs")
    # Checked for the default key too: a misconfigured output prefix inside the state prefix must
    # not let outputs overwrite the attempt ledger.
    if settings.state_prefix and location.key.startswith(settings.state_prefix):
        raise InvalidLocation(
            f"{OUTPUT_FIELD}: {location.uri} is inside the worker's state prefix '{settings.state_prefix}'"
        )
    return location


def _split(ref: str, *, default_bucket: str, field: str) -> S3Location:
    if ref.startswith(S3_SCHEME):
        bucket, slash, key = ref[len(S3_SCHEME) :].partition("/")
        if not slash or not key:
            raise InvalidLocation(f"{field}: {_quote(ref)} has no key; expected s3://bucket/key")
    elif "://" in ref:
        raise InvalidLocation(f"{field}: {_quote(ref)} is not an s3:// URI, an https:// URL or a bare key")
    else:
        bucket, key = default_bucket, ref
    _check_bucket(bucket, field=field)
    _check_key(key, field=field)
    return S3Location(bucket, key)


def _check_bucket(bucket: str, *, field: str) -> None:
    # S3's naming rules. An IP-shaped or "..." name cannot exist, and refusing it early keeps odd
    # names out of virtual-host URLs.
    if (
        not _BUCKET_PATTERN.fullmatch(bucket)
        or ".." in bucket
        or ".-" in bucket
        or "-." in bucket
        or _is_ip_address(bucket)
    ):
        raise InvalidLocation(f"{field}: {_quote(bucket)} is not a valid S3 bucket name")


def _check_key(key: str, *, field: str) -> None:
    if not key:
        raise InvalidLocation(f"{field}: the key is empty")
    # Control characters are checked before the key is quoted into any other message, so a key
    # carrying "\n" cannot forge extra lines in logs.
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise InvalidLocation(f"{field}: the key {_quote(key)} contains control characters")
    if any(unicodedata.category(ch) == "Cs" for ch in key):
        raise InvalidLocation(f"{field}: the key {_quote(key)} is not valid Unicode (lone surrogate)")
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidLocation(f"{field}: the key is {size} bytes in UTF-8; S3 allows at most {MAX_KEY_BYTES}")
    # S3 treats "." and ".." literally, but HTTP clients, proxies and S3-compatible servers may
    # normalise them in a path-style URL ("/inputs/../other-bucket/k"), escaping the bucket check.
    # "//", a leading "/" and backslashes are refused for the same reason: some layers rewrite them.
    if key.startswith("/"):
        raise InvalidLocation(f"{field}: the key {_quote(key)} starts with '/'")
    if "//" in key:
        raise InvalidLocation(f"{field}: the key {_quote(key)} contains '//'")
    if "\\" in key:
        raise InvalidLocation(f"{field}: the key {_quote(key)} contains a backslash")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise InvalidLocation(f"{field}: the key {_quote(key)} contains a '.' or '..' path segment")


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _quote(text: str, limit: int = 200) -> str:
    # repr() escapes control characters; the cut keeps a 1 KB hostile key from flooding messages.
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


__all__ = [
    "ADAPTER_EXTENSIONS",
    "MAX_KEY_BYTES",
    "InputLocation",
    "S3Location",
    "parse_adapter_location",
    "parse_adapter_source",
    "parse_input_location",
    "parse_input_source",
    "resolve_output_location",
]

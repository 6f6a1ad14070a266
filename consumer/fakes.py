"""In-memory fakes of the record path's outside protocols, kept beside them as httpx keeps its
`MockTransport` beside its transport base: `FakeStore` (the stages' `Store`), `FakeUrls` (the stages'
`UrlSource`), `FakeLedger` (the handler's `Ledger`) and `FakeProducer` (the publisher's `Producer`).

They keep the contracts the real ones keep (conditional puts, typed storage errors, the size limits of
`S3Settings`, acknowledged sends), so the production handler and stages run on them unchanged: the rules
of one record are tested in milliseconds, and the broker and S3 server are left for what only they show.
They are thread-safe: the stages call the store from I/O threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from storage import (
    FetchedObject,
    InputNotFound,
    LedgerEntry,
    ObjectVersion,
    PutOutcome,
    S3Location,
    S3Settings,
    StorageError,
    StoredObject,
    UrlLocation,
)
from storage.errors import AdapterRefused, InputTooLarge

SHA256_KEY = "sha256"  # as `storage.ImageStore.put_output` adds it


@dataclass
class _Object:
    data: bytes
    content_type: str
    metadata: dict[str, str]
    etag: str


class FakeStore:
    """S3 in a dict: `put_object` stages inputs; `objects` maps "bucket/key" to what was written."""

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.objects: dict[str, _Object] = {}
        self.reads: list[str] = []  # URIs read, in order (inputs and adapters)

    def put_object(
        self, location: S3Location, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        with self._lock:
            self.objects[_key(location)] = _Object(data, content_type, {}, _etag(data))

    def fetch(self, location: S3Location) -> bytes:
        return self._read(location, self._settings.max_image_bytes, InputTooLarge).data

    def describe_adapter(self, location: S3Location) -> ObjectVersion:
        obj = self._get(location)
        if len(obj.data) > self._settings.max_adapter_bytes:
            raise AdapterRefused(
                f"{location.uri} is {len(obj.data)} bytes, over the adapter limit of "
                f"{self._settings.max_adapter_bytes} bytes"
            )
        return ObjectVersion(location=location, size=len(obj.data), etag=obj.etag)

    def fetch_adapter(self, location: S3Location) -> FetchedObject:
        return self._read(location, self._settings.max_adapter_bytes, AdapterRefused)

    def find_output(self, location: S3Location) -> StoredObject | None:
        with self._lock:
            obj = self.objects.get(_key(location))
        if obj is None:
            return None
        return StoredObject(
            location=location,
            size=len(obj.data),
            sha256=obj.metadata.get(SHA256_KEY),
            metadata=dict(obj.metadata),
            content_type=obj.content_type,
        )

    def put_output(
        self, location: S3Location, data: bytes, *, content_type: str, metadata: dict[str, str]
    ) -> PutOutcome:
        """A conditional put (`If-None-Match: *`): an existing key is left as it is."""
        stored = {**metadata, SHA256_KEY: hashlib.sha256(data).hexdigest()}
        with self._lock:
            if _key(location) not in self.objects:
                self.objects[_key(location)] = _Object(data, content_type, stored, _etag(data))
                return PutOutcome(created=True)
        return PutOutcome(created=False, existing=self.find_output(location))

    def presign(self, location: S3Location, expires_s: int = 3600) -> str:
        """A URL of the form a presigned GET has (nothing is signed: there is no server)."""
        return f"http://fake-s3.invalid/{location.bucket}/{location.key}?X-Amz-Expires={expires_s}"

    def read(self, uri: str) -> bytes:
        """The bytes stored at an s3:// URI."""
        return self.objects[uri.removeprefix("s3://")].data

    def _read(self, location: S3Location, limit: int, too_large: type[Exception]) -> FetchedObject:
        obj = self._get(location)
        if len(obj.data) > limit:
            raise too_large(f"{location.uri} is {len(obj.data)} bytes, over the limit of {limit} bytes")
        with self._lock:
            self.reads.append(location.uri)
        return FetchedObject(data=obj.data, etag=obj.etag)

    def _get(self, location: S3Location) -> _Object:
        with self._lock:
            obj = self.objects.get(_key(location))
        if obj is None:
            raise InputNotFound(f"{location.uri} does not exist")
        return obj


class FakeUrls:
    """https URLs in a dict, keyed by the URL without its query (as a CDN ignores a presigned link's
    signature); `reads` lists the full URLs asked for. Keeps `UrlFetcher`'s contract: the size limit, the
    validator (an ETag) and a 304 (None) to a matching conditional read. The URL rules themselves are the
    production ones: they run before a read (`storage.urls`); the address check needs a real connection
    (tests/consumer/test_url_fetch.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []

    def put(self, url: str, data: bytes) -> None:
        with self._lock:
            self.objects[url.partition("?")[0]] = data

    async def fetch(
        self, location: UrlLocation, *, limit: int, too_large: type[StorageError], validator: str = ""
    ) -> FetchedObject | None:
        with self._lock:
            self.reads.append(location.url)
            data = self.objects.get(location.url.partition("?")[0])
        if data is None:
            raise InputNotFound(f"{location.uri} does not exist (HTTP 404)")
        etag = "etag:" + _etag(data)
        if validator and validator == etag:
            return None
        if len(data) > limit:
            raise too_large(f"{location.uri} is {len(data)} bytes, over the limit of {limit} bytes")
        return FetchedObject(data=data, etag=etag)


class FakeLedger:
    """Attempt counts per (topic, partition, offset) in a dict; `gpu_runs` counts every GPU run recorded
    (edits started on the GPU), also of entries cleared since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[tuple[str, int, int], LedgerEntry] = {}
        self.gpu_runs = 0

    def record_pickup(self, topic: str, partition: int, offset: int) -> LedgerEntry:
        return self._bump(topic, partition, offset, pickups=1)

    def record_gpu_run(self, topic: str, partition: int, offset: int) -> LedgerEntry:
        return self._bump(topic, partition, offset, gpu_runs=1)

    def clear(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self.entries.pop((topic, partition, offset), None)

    def _bump(
        self, topic: str, partition: int, offset: int, *, pickups: int = 0, gpu_runs: int = 0
    ) -> LedgerEntry:
        with self._lock:
            old = self.entries.get((topic, partition, offset), LedgerEntry())
            new = LedgerEntry(pickups=old.pickups + pickups, gpu_runs=old.gpu_runs + gpu_runs)
            self.entries[(topic, partition, offset)] = new
            self.gpu_runs += gpu_runs
            return new


@dataclass(frozen=True)
class SentRecord:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeProducer:
    """Acknowledges every send at once; `sent` holds what was sent, in order. `max_request_size` (bytes,
    as aiokafka's) refuses larger records as the real client does."""

    def __init__(self, *, max_request_size: int = 1_048_576) -> None:
        self.sent: list[SentRecord] = []
        self._max = max_request_size

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[Any]:
        self._append(topic, value, key, headers)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> Any:
        self._append(topic, value, key, headers)

    def on(self, topic: str) -> list[SentRecord]:
        return [record for record in self.sent if record.topic == topic]

    def _append(self, topic: str, value: bytes | None, key: bytes | None, headers: Any) -> None:
        from aiokafka.errors import MessageSizeTooLargeError

        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers or [])
        if size > self._max:
            raise MessageSizeTooLargeError(f"the record is {size} bytes, over max_request_size {self._max}")
        self.sent.append(SentRecord(topic, value, key, list(headers or [])))


def _key(location: S3Location) -> str:
    return f"{location.bucket}/{location.key}"


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'

"""A request's LoRA adapters in the prepare stage: allow-listed location, size limit, read, check, and a
host-memory LRU so a queue that reuses adapters reads and parses each one once.

S3 reads and parsing are blocking and run on an I/O thread; URL reads (`consumer.url_fetch`) on the event
loop. The cache is keyed by content (SHA-256 of the file); a small index maps each `(uri, validator)` seen
to its content, so a cached adapter costs one HEAD (S3: the ETag) or one conditional GET answered 304 Not
Modified (a URL: its ETag, else its Last-Modified), never a read; an object replaced at the same location (a
new validator) is read again. A URL is keyed whole, query included (the key stays in memory, never in a
log): a presigned link signed anew for each request misses the index, but its bytes still hit the content
cache, so the adapter is read again but not parsed again.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from consumer.http.metrics import WorkerMetrics
from consumer.url_fetch import UrlSource
from pipeline import ActiveAdapter, AdapterWeights, Editor
from schemas.requests import AdapterRef
from schemas.results import AdapterInfo
from storage import (
    AdapterRefused,
    FetchedObject,
    InputLocation,
    ObjectVersion,
    S3Location,
    S3Settings,
    UrlInputSettings,
    UrlLocation,
    parse_adapter_source,
)


class AdapterSource(Protocol):
    """What adapter reads need from S3 (`storage.ImageStore` is the real one)."""

    def describe_adapter(self, location: S3Location) -> ObjectVersion: ...
    def fetch_adapter(self, location: S3Location) -> FetchedObject: ...


@dataclass(frozen=True)
class ResolvedAdapter:
    """One entry of a request's `loras`, checked and ready for the GPU thread."""

    active: ActiveAdapter
    info: AdapterInfo
    load_ms: float  # reading and checking it (0 on a cache hit)
    cached: bool


class AdapterCache:
    """Checked adapters in host memory, least recently used evicted past `capacity_bytes`; thread-safe."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._lock = threading.Lock()
        self._by_hash: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._versions: dict[tuple[str, str], str] = {}  # (uri, etag) -> sha256
        self._latest: dict[str, str] = {}  # uri -> the etag (validator) last put for it
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_hash)

    def by_version(self, uri: str, etag: str) -> AdapterWeights | None:
        with self._lock:
            digest = self._versions.get((uri, etag)) if etag else None
            return self._touch(digest) if digest is not None else None

    def validator_of(self, uri: str) -> str:
        """The validator last put for `uri` whose content is still cached ("" when none)."""
        with self._lock:
            return self._latest.get(uri, "")

    def by_hash(self, sha256: str) -> AdapterWeights | None:
        with self._lock:
            return self._touch(sha256)

    def put(self, uri: str, etag: str, weights: AdapterWeights) -> None:
        size = weights.tensor_bytes
        with self._lock:
            if etag:
                self._versions[(uri, etag)] = weights.sha256
                self._latest[uri] = etag
            if weights.sha256 in self._by_hash:
                self._by_hash.move_to_end(weights.sha256)
                return
            if size > self._capacity:
                return
            self._by_hash[weights.sha256] = weights
            self._bytes += size
            while self._bytes > self._capacity:
                _digest, evicted = self._by_hash.popitem(last=False)
                self._bytes -= evicted.tensor_bytes
            live = set(self._by_hash)
            self._versions = {key: digest for key, digest in self._versions.items() if digest in live}
            self._latest = {uri: etag for uri, etag in self._latest.items() if (uri, etag) in self._versions}

    def _touch(self, digest: str) -> AdapterWeights | None:
        weights = self._by_hash.get(digest)
        if weights is not None:
            self._by_hash.move_to_end(digest)
        return weights


class AdapterResolver:
    """Turns `loras[i]` into a checked adapter: location rules, HEAD (or conditional GET), cache or read +
    parse."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        source: AdapterSource,
        editor: Editor,
        cache: AdapterCache,
        io: Executor | None = None,
        url_settings: UrlInputSettings | None = None,
        urls: UrlSource | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """`io`: the executor blocking reads and parsing run on (None: the loop's default).
        `url_settings` and `urls`: the URL rules and reader (None: URL inputs off, an https adapter is
        refused before any read)."""
        self._settings = settings
        self._source = source
        self._editor = editor
        self._cache = cache
        self._io = io
        self._url_settings = url_settings or UrlInputSettings()
        self._urls = urls
        self._metrics = metrics

    def locate(self, ref: AdapterRef, *, field: str) -> InputLocation:
        """The adapter's location; raises `InputForbidden`, `InvalidLocation` or `AdapterRefused`."""
        return parse_adapter_source(ref.uri, self._settings, self._url_settings, field=field)

    async def resolve(self, ref: AdapterRef, location: InputLocation, *, field: str) -> ResolvedAdapter:
        """Raises `InvalidAdapter`, `AdapterRefused` (over the size limit) or a storage error."""
        loop = asyncio.get_running_loop()
        if isinstance(location, S3Location):
            return await loop.run_in_executor(self._io, self.resolve_object, ref, location, field)
        started = time.perf_counter()
        weights, cached = await self._read_url(location, field)
        return self._resolved(ref, location.uri, weights, cached=cached, started=started)

    def resolve_object(self, ref: AdapterRef, location: S3Location, field: str) -> ResolvedAdapter:
        """Blocking: an adapter in S3 (HEAD, then the cache or a read and parse)."""
        version = self._source.describe_adapter(location)
        weights = self._cache.by_version(location.uri, version.etag)
        started = time.perf_counter()
        cached = weights is not None
        if weights is None:
            weights = self._accept(
                location.uri, self._source.fetch_adapter(location), f"{field} ({location.uri})"
            )
        return self._resolved(ref, location.uri, weights, cached=cached, started=started)

    async def _read_url(self, location: UrlLocation, field: str) -> tuple[AdapterWeights, bool]:
        """The adapter at a URL and whether it came from the cache (a 304 to the cached validator)."""
        if self._urls is None:
            raise RuntimeError("an https adapter was located, but this worker has no URL reader")
        key = location.url
        validator = self._cache.validator_of(key)
        limit = self._settings.max_adapter_bytes
        fetched = await self._urls.fetch(location, limit=limit, too_large=AdapterRefused, validator=validator)
        if fetched is None:
            weights = self._cache.by_version(key, validator)
            if weights is not None:
                return weights, True
            # Evicted between the lookup and the answer: read it unconditionally.
            fetched = await self._urls.fetch(location, limit=limit, too_large=AdapterRefused)
            assert fetched is not None
        name = f"{field} ({location.uri})"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._accept, key, fetched, name), False

    def _accept(self, key: str, fetched: FetchedObject, name: str) -> AdapterWeights:
        """Blocking: the adapter's weights from the content cache, else parsed and checked; cached."""
        weights = self._cache.by_hash(hashlib.sha256(fetched.data).hexdigest())
        if weights is None:
            weights = self._editor.parse_adapter(fetched.data, name=name)
        self._cache.put(key, fetched.etag, weights)
        return weights

    def _resolved(
        self, ref: AdapterRef, uri: str, weights: AdapterWeights, *, cached: bool, started: float
    ) -> ResolvedAdapter:
        load_ms = 0.0 if cached else (time.perf_counter() - started) * 1000.0
        if self._metrics is not None:
            self._metrics.observe_adapter(cached=cached, cache_bytes=self._cache.size_bytes)
        return ResolvedAdapter(
            active=ActiveAdapter(weights=weights, scale=ref.scale),
            info=AdapterInfo(uri=uri, scale=ref.scale, sha256=weights.sha256, bytes=weights.nbytes),
            load_ms=load_ms,
            cached=cached,
        )

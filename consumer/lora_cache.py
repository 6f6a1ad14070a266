"""A request's LoRA adapters in the prepare stage: allow-listed location, size limit, read, check, and a
host-memory LRU so a queue that reuses adapters reads and parses each one once.

Everything here is blocking and runs on an I/O thread. The cache is keyed by content (SHA-256 of the
file); a small index maps each `(uri, ETag)` seen to its content, so a cached adapter costs one HEAD
(no read) and an object replaced at the same key (a new ETag) is read again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from consumer.http.metrics import WorkerMetrics
from pipeline import ActiveAdapter, AdapterWeights, Editor
from schemas.requests import AdapterRef
from schemas.results import AdapterInfo
from storage import FetchedObject, ObjectVersion, S3Location, S3Settings, parse_adapter_location


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

    def by_hash(self, sha256: str) -> AdapterWeights | None:
        with self._lock:
            return self._touch(sha256)

    def put(self, uri: str, etag: str, weights: AdapterWeights) -> None:
        size = weights.tensor_bytes
        with self._lock:
            if etag:
                self._versions[(uri, etag)] = weights.sha256
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

    def _touch(self, digest: str) -> AdapterWeights | None:
        weights = self._by_hash.get(digest)
        if weights is not None:
            self._by_hash.move_to_end(digest)
        return weights


class AdapterResolver:
    """Turns `loras[i]` into a checked adapter: location rules, HEAD, cache or read + parse."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        source: AdapterSource,
        editor: Editor,
        cache: AdapterCache,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._source = source
        self._editor = editor
        self._cache = cache
        self._metrics = metrics

    def locate(self, ref: AdapterRef, *, field: str) -> S3Location:
        """The adapter's location; raises `InputForbidden`, `InvalidLocation` or `AdapterRefused`."""
        return parse_adapter_location(ref.uri, self._settings, field=field)

    def resolve(self, ref: AdapterRef, location: S3Location, *, field: str) -> ResolvedAdapter:
        """Blocking. Raises `InvalidAdapter`, `AdapterRefused` (over the size limit) or a storage error."""
        version = self._source.describe_adapter(location)
        weights = self._cache.by_version(location.uri, version.etag)
        started = time.perf_counter()
        cached = weights is not None
        if weights is None:
            fetched = self._source.fetch_adapter(location)
            weights = self._cache.by_hash(hashlib.sha256(fetched.data).hexdigest())
            if weights is None:
                weights = self._editor.parse_adapter(fetched.data, name=f"{field} ({location.uri})")
            self._cache.put(location.uri, fetched.etag, weights)
        load_ms = 0.0 if cached else (time.perf_counter() - started) * 1000.0
        if self._metrics is not None:
            self._metrics.observe_adapter(cached=cached, cache_bytes=self._cache.size_bytes)
        return ResolvedAdapter(
            active=ActiveAdapter(weights=weights, scale=ref.scale),
            info=AdapterInfo(uri=location.uri, scale=ref.scale, sha256=weights.sha256, bytes=weights.nbytes),
            load_ms=load_ms,
            cached=cached,
        )

"""Reading inputs and adapters by https URL, built as careful fetchers are (the SSRF model: README.md).

`UrlFetcher` holds the worker's one `aiohttp.ClientSession`, opened and closed with the worker. Each read:

1. checks the URL of every hop (the request's and each redirect's) against `storage.urls`: https, no user
   information, an allowed host, and, for an IP literal, an allowed address (aiohttp connects to a literal
   without asking the resolver, so the literal is checked here);
2. connects through `CheckedResolver`, which refuses a name that resolves to a refused address at the
   moment of connecting, so the address checked is the address connected to (DNS rebinding cannot slip a
   private address in between a check and the connection); no proxy is used (`trust_env=False`), since a
   proxy would make the connection the resolver never sees;
3. follows redirects itself (`allow_redirects=False`), at most `max_redirects`, each target checked again;
4. refuses a body over the limit from its Content-Length before reading, then counts the streamed bytes;
5. bounds time with `aiohttp.ClientTimeout` (connect, silence between reads, total).

Errors are the S3 reads' (`storage.errors`): a refused URL, host or address and 401/403 are
`InputForbidden`, 404/410 `InputNotFound`, too large the caller's `too_large`, and timeouts, refused
connections, 408/425/429 and 5xx `StorageUnavailable` (retryable). Messages and log lines show a URL only
as `redact_url` gives it: a presigned link's query is a secret.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from types import TracebackType
from typing import Final, Protocol

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDictProxy
from yarl import URL

from consumer.settings import ConfigurationError
from storage import (
    METADATA_REFUSAL,
    AddressPolicy,
    FetchedObject,
    InputForbidden,
    InputNotFound,
    StorageError,
    StorageUnavailable,
    UrlInputSettings,
    UrlLocation,
    host_allowed,
    redact_url,
)

log = structlog.get_logger(__name__)

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
NOT_FOUND_STATUSES: Final = frozenset({404, 410})
FORBIDDEN_STATUSES: Final = frozenset({401, 403})
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
CHUNK_BYTES: Final = 256 * 1024
# Validators as the adapter cache keeps them: which header they came from, then its value.
ETAG_PREFIX, MODIFIED_PREFIX = "etag:", "last-modified:"


class UrlSource(Protocol):
    """What the stages need to read URLs (`UrlFetcher` is the real one, `consumer.fakes.FakeUrls` the
    in-memory one of the record-path tests)."""

    async def fetch(
        self, location: UrlLocation, *, limit: int, too_large: type[StorageError], validator: str = ""
    ) -> FetchedObject | None: ...


class AddressRefused(Exception):
    """Raised by `CheckedResolver` (and for IP literals) when a host's address is refused by the policy.
    Not an `OSError`, so aiohttp passes it through rather than wrapping it as a DNS failure."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        if host == address:
            super().__init__(f"address {address} is {reason}")
        else:
            super().__init__(f"host '{host}' resolves to {address} ({reason})")
        self.host = host
        self.address = address
        self.reason = reason


class CheckedResolver(AbstractResolver):
    """aiohttp's default resolver, with every address it returns checked by an `AddressPolicy`.

    One refused address refuses the host: a public host has no private addresses, and connecting to the
    others would leave the refusal to the order the connector tries them in.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of `host`; raises `AddressRefused` if any is refused, `OSError` when it has none."""
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = self._policy.refusal(result["host"])
            if reason is not None:
                raise AddressRefused(host, result["host"], reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


class UrlFetcher:
    """Reads https URLs under `UrlInputSettings`; an async context manager owning one `ClientSession`.

    `resolver` replaces aiohttp's default resolver under the address check (tests point names at
    loopback with it); the check itself is always applied.
    """

    def __init__(self, settings: UrlInputSettings, *, resolver: AbstractResolver | None = None) -> None:
        self._settings = settings
        self._policy = AddressPolicy.from_settings(settings)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    @property
    def settings(self) -> UrlInputSettings:
        return self._settings

    async def __aenter__(self) -> UrlFetcher:
        """Open the session; raises `ConfigurationError` when the CA bundle cannot be loaded."""
        context = ssl.create_default_context()
        if self._settings.ca_bundle:
            # In addition to the system's trust store: an on-premises CDN and public CDNs may both be allowed.
            try:
                context.load_verify_locations(cafile=self._settings.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"KLEIN_EDIT_URL_INPUTS__CA_BUNDLE: cannot load {self._settings.ca_bundle!r} as PEM "
                    f"certificates ({exc})"
                ) from exc
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._policy, self._inner_resolver), ssl=context, limit=32
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._settings.total_timeout_s,
                sock_connect=self._settings.connect_timeout_s,
                sock_read=self._settings.read_timeout_s,
            ),
            trust_env=False,  # no proxy from the environment: the connection must be the one checked
            cookie_jar=aiohttp.DummyCookieJar(),  # nothing carried from one request's reads to another's
            auto_decompress=True,  # a compressed body is counted against the limit as decompressed
            # identity: the Content-Length checked before the read is the size of what is read.
            headers={"User-Agent": "klein-edit", "Accept-Encoding": "identity"},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self,
        location: UrlLocation,
        *,
        limit: int,
        too_large: type[StorageError],
        validator: str = "",
    ) -> FetchedObject | None:
        """The body of `location` (at most `limit` bytes) and its validator (`etag:<ETag>`, else
        `last-modified:<date>`, else ""); None when `validator` was given and the server answered 304
        Not Modified (a conditional GET: the cached copy is current).

        Raises `InputForbidden`, `InputNotFound`, `too_large` or `StorageUnavailable` (see the module).
        """
        session = self._session
        if session is None:
            raise RuntimeError("UrlFetcher used outside `async with`")
        shown = location.uri
        url = URL(location.url, encoded=True)  # as given: re-encoding would break a presigned signature
        headers = _conditional(validator)
        hop = 0
        try:
            # The session's total timeout bounds each hop; this bounds the read, redirects included.
            async with asyncio.timeout(self._settings.total_timeout_s):
                for hop in range(self._settings.max_redirects + 1):
                    self._check_target(url, shown, redirected=hop > 0)
                    async with session.get(url, allow_redirects=False, headers=headers) as response:
                        if response.status in REDIRECT_STATUSES:
                            target = response.headers.get("Location")
                            if not target:
                                raise InputForbidden(
                                    f"{shown}: redirect ({response.status}) without a Location"
                                )
                            url = url.join(URL(target))
                            log.debug("url.redirected", source=shown, status=response.status, to=_shown(url))
                            continue
                        if response.status == 304 and validator:
                            return None
                        _check_status(response.status, shown)
                        length = response.content_length
                        if length is not None and length > limit:
                            raise too_large(f"{shown} is {length} bytes, over the limit of {limit} bytes")
                        data = await _read(response, limit, too_large, shown)
                        return FetchedObject(data=data, etag=_validator(response.headers))
            raise InputForbidden(
                f"{shown}: more than {self._settings.max_redirects} redirects "
                "(KLEIN_EDIT_URL_INPUTS__MAX_REDIRECTS)"
            )
        except AddressRefused as exc:
            where = f"{shown}: redirected to {_shown(url)}" if hop else shown
            remedy = (
                "never allowed"
                if exc.reason == METADATA_REFUSAL
                else "KLEIN_EDIT_URL_INPUTS__ALLOWED_PRIVATE_NETWORKS may allow a private range"
            )
            raise InputForbidden(f"{where}: {exc}, which this worker may not connect to ({remedy})") from exc
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError and the total timeout both
            raise StorageUnavailable(f"cannot read {shown}: timed out") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise InputForbidden(
                f"cannot read {shown}: its TLS certificate is not trusted ({exc.certificate_error}); "
                "a private CA goes in KLEIN_EDIT_URL_INPUTS__CA_BUNDLE"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # Its message names host, port and the socket error, never the path or query.
            raise StorageUnavailable(f"cannot read {shown}: {exc}") from exc
        except (aiohttp.InvalidURL, ValueError) as exc:
            # yarl's and aiohttp's messages quote the URL, query included: not shown.
            raise InputForbidden(f"{shown}: not a URL this worker can read (or redirected to one)") from exc
        except aiohttp.ClientError as exc:
            # Its message may quote the whole URL (ClientResponseError does): only the type is shown.
            raise StorageUnavailable(f"cannot read {shown}: {type(exc).__name__}") from exc

    def _check_target(self, url: URL, shown: str, *, redirected: bool) -> None:
        """The URL rules on one hop; an IP literal's address too (aiohttp skips the resolver for it)."""
        where = f"{shown}: redirected to {_shown(url)}" if redirected else shown
        if url.scheme != "https":
            raise InputForbidden(f"{where}: only https URLs are read, not {url.scheme}://")
        if url.user is not None or url.password is not None:
            raise InputForbidden(f"{where}: a URL with user information ('user@host') is not read")
        # The name as it goes on the wire (IDNA-encoded), as an operator lists it; `host` would decode it.
        host = (url.raw_host or "").rstrip(".").lower()
        if not host_allowed(host, self._settings.allowed_hosts):
            raise InputForbidden(
                f"{where}: host '{host}' is not allowed (KLEIN_EDIT_URL_INPUTS__ALLOWED_HOSTS)"
            )
        if _is_ip_literal(host):
            reason = self._policy.refusal(host)
            if reason is not None:
                raise AddressRefused(host, host, reason)


def _check_status(status: int, shown: str) -> None:
    if status == 200:
        return
    if status in NOT_FOUND_STATUSES:
        raise InputNotFound(f"{shown} does not exist (HTTP {status})")
    if status in FORBIDDEN_STATUSES:
        raise InputForbidden(f"{shown}: access denied (HTTP {status}); a presigned link may have expired")
    if status in TRANSIENT_STATUSES or status >= 500:
        raise StorageUnavailable(f"cannot read {shown}: HTTP {status}")
    raise InputForbidden(f"cannot read {shown}: HTTP {status}")


async def _read(
    response: aiohttp.ClientResponse, limit: int, too_large: type[StorageError], shown: str
) -> bytes:
    """The body, counted as it streams: a server that sends no Content-Length, or a wrong one, cannot make
    the worker hold more than `limit` bytes (+ one chunk)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise too_large(f"{shown} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _conditional(validator: str) -> dict[str, str]:
    if validator.startswith(ETAG_PREFIX):
        return {"If-None-Match": validator.removeprefix(ETAG_PREFIX)}
    if validator.startswith(MODIFIED_PREFIX):
        return {"If-Modified-Since": validator.removeprefix(MODIFIED_PREFIX)}
    return {}


def _validator(headers: CIMultiDictProxy[str]) -> str:
    etag = headers.get("ETag")
    if etag:
        return ETAG_PREFIX + etag
    modified = headers.get("Last-Modified")
    return MODIFIED_PREFIX + modified if modified else ""


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _shown(url: URL) -> str:
    return redact_url(str(url))


__all__ = ["AddressRefused", "CheckedResolver", "UrlFetcher", "UrlSource"]

"""The URL reader against a real https server on loopback with a test certificate (`https_origin`): what it
reads, what it refuses (by host, by address, by size, by time) and that no message shows a URL's query.

Loopback stands in for both sides of the address policy: refused by default, allowed where a test lists
127.0.0.1/32 in `allowed_private_networks`, as an operator lists an on-premises CDN's network.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from consumer.settings import ConfigurationError
from consumer.url_fetch import UrlFetcher
from storage import (
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    StorageError,
    StorageUnavailable,
    UrlInputSettings,
)
from storage.urls import parse_url_location
from tests.consumer.https_origin import HttpsOrigin
from tests.tls import TlsFiles

pytestmark = pytest.mark.timeout(30)
SECRET = "X-Amz-Signature=0123456789abcdef&X-Amz-Credential=AKIDEXAMPLE"
LIMIT = 1000


def url_settings(tls: TlsFiles, **overrides: Any) -> UrlInputSettings:
    fields: dict[str, Any] = {
        "enabled": True,
        "allowed_hosts": ["127.0.0.1", "localhost", "10.0.0.1", "::ffff:127.0.0.1", "*.test"],
        "allowed_private_networks": ["127.0.0.1/32"],
        "ca_bundle": str(tls.ca_file),
        "connect_timeout_s": 2.0,
        "read_timeout_s": 0.5,
        "total_timeout_s": 10.0,
    }
    fields.update(overrides)
    return UrlInputSettings(**fields)


class StaticResolver(AbstractResolver):
    """Names to fixed addresses, as a DNS server an attacker controls would answer them."""

    def __init__(self, table: dict[str, str]) -> None:
        self._table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self._table[host]
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [{"hostname": host, "host": address, "port": port, "family": kind, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def read(
    settings: UrlInputSettings,
    url: str,
    *,
    resolver: AbstractResolver | None = None,
    too_large: type[StorageError] = InputTooLarge,
    validator: str = "",
) -> Any:
    location = parse_url_location(url, settings, field="image")
    async with UrlFetcher(settings, resolver=resolver) as fetcher:
        return await fetcher.fetch(location, limit=LIMIT, too_large=too_large, validator=validator)


async def refused(error: type[StorageError], settings: UrlInputSettings, url: str, **kwargs: Any) -> str:
    """The message of the error reading `url` raises; it must not show the URL's query."""
    with pytest.raises(error) as info:
        await read(settings, url, **kwargs)
    assert type(info.value) is error
    message = info.value.message
    assert "Signature" not in message, message
    assert "AKIDEXAMPLE" not in message, message
    return message


async def test_an_allowed_url_is_read_as_given_with_its_validator(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    https_origin.files["a.png"] = b"\x89PNG body"
    settings = url_settings(tls_files)
    fetched = await read(settings, https_origin.url(f"/files/a.png?{SECRET}"))
    assert fetched.data == b"\x89PNG body"
    assert fetched.etag.startswith('etag:"')
    assert https_origin.queries == [SECRET]  # the presigned query reached the server unchanged
    # A conditional read with the same validator is answered 304: None, no body.
    assert await read(settings, https_origin.url("/files/a.png"), validator=fetched.etag) is None
    assert https_origin.not_modified["/files/a.png"] == 1


async def test_a_host_not_allowed_is_refused_before_any_connection(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    settings = url_settings(tls_files, allowed_hosts=["cdn.example.com", "*.test"])
    message = await refused(InputForbidden, settings, https_origin.url(f"/files/a.png?{SECRET}"))
    assert "host '127.0.0.1' is not allowed" in message
    for url in ("https://example.test.evil.com/a.png", "https://test/a.png"):  # a suffix, not the name
        await refused(InputForbidden, settings, url)
    await refused(InputForbidden, settings, f"http://x.test/a.png?{SECRET}")  # https only
    await refused(InputForbidden, settings, "https://user:pw@x.test/a.png")
    assert sum(https_origin.hits.values()) == 0


async def test_a_name_that_resolves_to_loopback_is_refused_when_connecting(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    https_origin.files["a.png"] = b"body"
    # localhost is an allowed host; its addresses (127.0.0.1, ::1) are not in the allowed networks.
    settings = url_settings(tls_files, allowed_private_networks=[])
    message = await refused(InputForbidden, settings, https_origin.url(f"/files/a.png?{SECRET}", "localhost"))
    assert "host 'localhost' resolves to" in message
    assert "loopback" in message
    assert sum(https_origin.hits.values()) == 0
    # With loopback allowed (as an operator allows an on-premises CDN's network), the same name is read.
    allowed = url_settings(tls_files, allowed_private_networks=["127.0.0.0/8", "::1/128"])
    assert (await read(allowed, https_origin.url("/files/a.png", "localhost"))).data == b"body"


async def test_ip_literals_are_checked_although_no_resolver_is_asked(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    # aiohttp connects to an IP literal without asking the resolver (so the fetcher checks literals itself).
    https_origin.files["a.png"] = b"body"
    resolver = StaticResolver({})
    allowed = url_settings(tls_files)
    assert (await read(allowed, https_origin.url("/files/a.png"), resolver=resolver)).data == b"body"
    assert resolver.asked == []
    settings = url_settings(tls_files, allowed_private_networks=[])
    message = await refused(InputForbidden, settings, https_origin.url("/files/a.png"))
    assert "address 127.0.0.1 is loopback" in message
    # The IPv4-mapped IPv6 form of the same address: judged as the IPv4 address inside it.
    message = await refused(InputForbidden, settings, https_origin.url("/files/a.png", "::ffff:127.0.0.1"))
    assert "loopback (127.0.0.1)" in message
    assert https_origin.hits["/files/a.png"] == 1  # only the allowed read


async def test_names_resolving_to_private_mapped_or_metadata_addresses_are_refused(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    # An attacker's DNS (or a rebinding one, on its second answer) points allowed names inside.
    resolver = StaticResolver(
        {
            "private.test": "10.1.2.3",
            "mapped.test": "::ffff:127.0.0.1",
            "metadata.test": "169.254.169.254",
            "v6metadata.test": "fd00:ec2::254",
            "v6local.test": "fe80::1",
        }
    )
    # Even with link-local and all of 10/8 allowed, metadata addresses stay refused.
    settings = url_settings(tls_files, allowed_private_networks=["169.254.0.0/16", "fd00::/8"])
    cases = {
        "private.test": "10.1.2.3 (private), which this worker may not connect to "
        "(KLEIN_EDIT_URL_INPUTS__ALLOWED_PRIVATE_NETWORKS may allow a private range)",
        "mapped.test": "loopback (127.0.0.1)",
        "metadata.test": "(a cloud metadata address), which this worker may not connect to (never allowed)",
        "v6metadata.test": "(a cloud metadata address), which this worker may not connect to (never allowed)",
        "v6local.test": "link-local",
    }
    for host, words in cases.items():
        url = f"https://{host}:{https_origin.port}/files/a.png?{SECRET}"
        message = await refused(InputForbidden, settings, url, resolver=resolver)
        assert words in message, message


async def test_redirects_are_followed_only_to_allowed_hosts_and_addresses(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    https_origin.files["a.png"] = b"body"
    settings = url_settings(tls_files)
    origin = https_origin.url("/redirect")
    ok = await read(settings, f"{origin}?to=/files/a.png")
    assert ok.data == b"body"
    # A redirect to a private address (10.0.0.1 is an allowed host name, not an allowed network).
    message = await refused(InputForbidden, settings, f"{origin}?to=https://10.0.0.1/files/a.png")
    assert "redirected to https://10.0.0.1/files/a.png" in message
    assert "private" in message
    message = await refused(InputForbidden, settings, f"{origin}?to=https://cdn.example.com/a.png")
    assert "host 'cdn.example.com' is not allowed" in message
    message = await refused(InputForbidden, settings, f"{origin}?to=http://127.0.0.1:{https_origin.port}/")
    assert "only https" in message
    # An allowed name that resolves to a private address, reached through a redirect.
    resolver = StaticResolver({"inside.test": "192.168.1.20"})
    target = f"https://inside.test:{https_origin.port}/files/a.png?{SECRET}"
    message = await refused(InputForbidden, settings, f"{origin}?to={quote(target)}", resolver=resolver)
    assert "redirected to https://inside.test" in message
    assert "192.168.1.20 (private)" in message
    malformed = quote(f"https://[::1/x?{SECRET}")
    message = await refused(InputForbidden, settings, f"{origin}?to={malformed}")
    assert "not a URL this worker can read" in message
    looping = url_settings(tls_files, max_redirects=2)
    message = await refused(InputForbidden, looping, https_origin.url("/loop"))
    assert "more than 2 redirects" in message
    assert https_origin.hits["/loop"] == 3


async def test_the_size_limit_applies_before_and_during_the_read(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    settings = url_settings(tls_files)
    assert len((await read(settings, https_origin.url(f"/sized/{LIMIT}"))).data) == LIMIT
    message = await refused(InputTooLarge, settings, https_origin.url(f"/sized/{LIMIT + 1}?{SECRET}"))
    assert f"is {LIMIT + 1} bytes, over the limit of {LIMIT} bytes" in message  # from the Content-Length
    message = await refused(InputTooLarge, settings, https_origin.url(f"/chunked/{LIMIT * 5}?{SECRET}"))
    assert f"over the limit of {LIMIT} bytes" in message  # no Content-Length: counted as it streams
    assert len((await read(settings, https_origin.url(f"/chunked/{LIMIT}"))).data) == LIMIT


async def test_a_slow_body_times_out_as_a_retryable_error(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    started = time.monotonic()
    message = await refused(StorageUnavailable, url_settings(tls_files), https_origin.url(f"/slow?{SECRET}"))
    assert "timed out" in message
    assert time.monotonic() - started < 3.0  # the 0.5 s read timeout, not the server's 10 s stall
    assert StorageUnavailable.retryable


async def test_answers_map_to_the_codes_of_s3_reads(https_origin: HttpsOrigin, tls_files: TlsFiles) -> None:
    settings = url_settings(tls_files)
    cases: list[tuple[int, type[StorageError]]] = [
        (404, InputNotFound),
        (410, InputNotFound),
        (403, InputForbidden),
        (401, InputForbidden),
        (503, StorageUnavailable),
        (429, StorageUnavailable),
    ]
    for status, error in cases:
        message = await refused(error, settings, https_origin.url(f"/status/{status}?{SECRET}"))
        assert str(status) in message


async def test_a_certificate_from_an_untrusted_ca_is_refused(
    https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    settings = url_settings(tls_files, ca_bundle=None)  # the system's trust store only
    message = await refused(InputForbidden, settings, https_origin.url(f"/files/a.png?{SECRET}"))
    assert "certificate is not trusted" in message


async def test_a_ca_bundle_that_cannot_be_loaded_is_a_configuration_error(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    (tmp_path / "not-pem.crt").write_text("not a certificate")
    for path in (tmp_path / "missing.crt", tmp_path / "not-pem.crt"):
        with pytest.raises(ConfigurationError, match="KLEIN_EDIT_URL_INPUTS__CA_BUNDLE"):
            async with UrlFetcher(url_settings(tls_files, ca_bundle=str(path))):
                pass

"""Inputs by https URL: which URLs a request may name and which addresses the worker may connect to.

Everything here is pure (no network); `consumer.url_fetch` applies it on every hop of a read. A URL
fetcher is the classic server-side request forgery hole, so the rules are layered:

1. the URL: https only, no credentials in it, a host in the operator's allow-list (exact or `*.suffix`);
2. the address: whatever the host resolves to, checked when connecting (so a name that resolves to a
   private address on the second lookup, DNS rebinding, is refused too): only public addresses, unless
   inside a network the operator allows; cloud metadata addresses never.

A URL may carry a secret (a presigned signature in its query), so `UrlLocation.uri`, the form every
message, log line and provenance record uses, drops the query, the fragment and any user information.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from storage.config import UrlInputSettings
from storage.errors import InputForbidden, InvalidLocation

HTTPS_SCHEME = "https"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_REFUSAL = "a cloud metadata address"  # never allowed, whatever the allowed networks say
# Instance metadata services (AWS IMDS over IPv4 and IPv6, ECS task metadata, Alibaba Cloud; GCP and Azure
# use 169.254.169.254 too). Refused even inside a network the operator allows: an allowed 169.254.0.0/16
# must not hand out the node's credentials.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("169.254.169.254/32", "169.254.170.2/32", "100.100.100.200/32", "fd00:ec2::254/128")
)
# The NAT64 well-known prefix (RFC 6052): DNS64 answers 64:ff9b::a.b.c.d for an IPv4-only host.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class UrlLocation:
    """One https URL. `url` is exactly as the request gave it (a presigned signature must not be
    re-encoded) and may hold a secret: only `uri` (no query, fragment or user information) is shown."""

    url: str = field(repr=False)
    host: str  # lower case; an IPv6 literal without brackets

    @property
    def uri(self) -> str:
        return redact_url(self.url)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"UrlLocation({self.uri!r})"


def redact_url(url: str) -> str:
    """`url` as it may be shown: `scheme://host[:port]/path`, without user information, query or fragment
    (e.g. a presigned S3 link's `X-Amz-Signature`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return SplitResult(parts.scheme, netloc, parts.path, "", "").geturl()


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` (lower case, no brackets, no trailing dot) matches one of `patterns`: an exact name or
    IP literal, or `*.suffix`, which matches names under the suffix but not the suffix itself."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern or _same_address(host, pattern):
            return True
    return False


def parse_url_location(ref: str, settings: UrlInputSettings, *, field: str) -> UrlLocation:
    """Check an https input reference against the operator's rules; `field` starts every message.

    Raises `InputForbidden` when URL inputs are off, the scheme is not https, the URL carries user
    information, or its host is not in `settings.allowed_hosts`; `InvalidLocation` for a URL that cannot
    be parsed (whitespace or control characters, a backslash, no host, a bad port).
    """
    shown = redact_url(ref)
    if not settings.enabled:
        raise InputForbidden(
            f"{field}: this worker reads no URLs ({shown}); KLEIN_EDIT_URL_INPUTS__ENABLED is false"
        )
    # Characters that parsers disagree on ("https://a\\@b/"), or that forge log lines.
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs") for ch in ref) or "\\" in ref:
        raise InvalidLocation(f"{field}: the URL {shown!r} contains whitespace, control characters or '\\'")
    try:
        parts = urlsplit(ref)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise InvalidLocation(f"{field}: {shown!r} is not a valid URL ({exc})") from exc
    if parts.scheme.lower() != HTTPS_SCHEME:
        raise InputForbidden(f"{field}: only https URLs are read, not {parts.scheme}:// ({shown})")
    if parts.username is not None or parts.password is not None:
        raise InputForbidden(f"{field}: a URL with user information ('user@host') is not read ({shown})")
    host = (parts.hostname or "").rstrip(".")
    if not host or not host.isascii():
        raise InvalidLocation(f"{field}: {shown!r} has no host, or a host that is not ASCII (use punycode)")
    if not host_allowed(host, settings.allowed_hosts):
        raise InputForbidden(
            f"{field}: host '{host}' is not allowed ({shown}); allowed: KLEIN_EDIT_URL_INPUTS__ALLOWED_HOSTS"
        )
    return UrlLocation(url=ref, host=host)


class AddressPolicy:
    """Which addresses the worker may connect to: public ones, and those inside `allowed_networks`.

    Refused: loopback, private, link-local, multicast, reserved, unspecified, shared (100.64.0.0/10) and
    every other address Python's `ipaddress` does not call global, judged on the IPv4 address inside an
    IPv4-mapped, NAT64 or 6to4 IPv6 address; and `METADATA_NETWORKS` always.
    """

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self._allowed = [ipaddress.ip_network(net, strict=False) for net in allowed_networks]

    @classmethod
    def from_settings(cls, settings: UrlInputSettings) -> AddressPolicy:
        return cls(settings.allowed_private_networks)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why the worker may not connect to `address` (e.g. "loopback"), or None when it may."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
        except ValueError:
            return "not an IP address"
        # An IPv6 address that stands for an IPv4 address is judged as that address: the socket (mapped)
        # or a gateway (NAT64 under DNS64, 6to4) connects there.
        inner = _inner(ip)
        candidates = [ip] if inner is None else [inner]
        for candidate in candidates:
            if any(candidate in net for net in METADATA_NETWORKS):
                return METADATA_REFUSAL
        for candidate in candidates:
            if any(candidate.version == net.version and candidate in net for net in self._allowed):
                continue
            reason = _kind(candidate)
            if reason is not None:
                shown = "" if candidate is ip else f" ({candidate})"
                return f"{reason}{shown}"
        return None


def _inner(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (IPv4-mapped, NAT64, 6to4), or None."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _kind(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not public"
    return None


def _same_address(host: str, pattern: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(pattern)
    except ValueError:
        return False


__all__ = [
    "METADATA_NETWORKS",
    "AddressPolicy",
    "UrlLocation",
    "host_allowed",
    "parse_url_location",
    "redact_url",
]

"""The URL rules without a network: host matching, the address policy, parsing and redaction."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from storage import (
    AdapterRefused,
    InputForbidden,
    InvalidLocation,
    S3Location,
    S3Settings,
    UrlInputSettings,
    UrlLocation,
    parse_adapter_source,
    parse_input_source,
)
from storage.urls import AddressPolicy, host_allowed, parse_url_location, redact_url

S3 = S3Settings(input_bucket="in-bucket", output_bucket="out-bucket", adapter_buckets=["adapters"])
URLS = UrlInputSettings(enabled=True, allowed_hosts=["cdn.example.com", "*.cloudfront.net", "203.0.113.7"])


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("cdn.example.com", True),
        ("CDN.Example.com.", True),  # case and a trailing dot do not matter
        ("d1.cloudfront.net", True),
        ("a.b.cloudfront.net", True),
        ("cloudfront.net", False),  # '*.suffix' is the names under it, not the suffix itself
        ("evilcloudfront.net", False),
        ("cloudfront.net.evil.com", False),
        ("cdn.example.com.evil.com", False),
        ("example.com", False),
        ("203.0.113.7", True),
        ("::ffff:203.0.113.7", False),  # another address, though it leads to the same place
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, URLS.allowed_hosts) is allowed


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of a public address (DNS64 clusters)
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("100.64.0.1", "not public"),  # shared address space (carrier-grade NAT)
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),  # reserved, and called private by ipaddress
        ("169.254.169.254", "a cloud metadata address"),
        ("169.254.170.2", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("::ffff:127.0.0.1", "loopback (127.0.0.1)"),  # IPv4-mapped: judged as the IPv4 address
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("64:ff9b::7f00:1", "loopback (127.0.0.1)"),  # NAT64 of loopback
        ("2002:a01:203::1", "private (10.1.2.3)"),  # 6to4 of a private address
        ("not-an-address", "not an IP address"),
    ],
)
def test_address_policy_refuses_what_is_not_public(address: str, reason: str | None) -> None:
    assert AddressPolicy().refusal(address) == reason


def test_allowed_networks_open_private_ranges_but_never_metadata() -> None:
    policy = AddressPolicy(["10.20.0.0/16", "169.254.0.0/16", "127.0.0.0/8"])
    assert policy.refusal("10.20.3.4") is None
    assert policy.refusal("10.21.3.4") == "private"
    assert policy.refusal("::ffff:127.0.0.1") is None  # the mapped form of an allowed address
    assert policy.refusal("169.254.1.1") is None
    assert policy.refusal("169.254.169.254") == "a cloud metadata address"


def test_redact_url_drops_query_fragment_and_user_information() -> None:
    url = "https://user:pw@CDN.example.com:8443/a/b.png?X-Amz-Signature=secret&X-Amz-Credential=AKID#frag"
    assert redact_url(url) == "https://cdn.example.com:8443/a/b.png"
    assert redact_url("https://[::1]:5/x?token=1") == "https://[::1]:5/x"
    location = parse_url_location("https://cdn.example.com/a.png?sig=secret", URLS, field="image")
    assert location.uri == str(location) == "https://cdn.example.com/a.png"
    assert "secret" not in repr(location)
    assert location.url.endswith("?sig=secret")  # kept whole for the read itself


@pytest.mark.parametrize(
    ("ref", "error", "words"),
    [
        ("https://cdn.example.com/a.png?s=1", None, ""),
        ("HTTPS://cdn.example.com/a.png", None, ""),
        ("https://evil.com/a.png?s=secret", InputForbidden, "host 'evil.com' is not allowed"),
        ("http://cdn.example.com/a.png", InputForbidden, "only https"),
        ("https://user@cdn.example.com/a.png", InputForbidden, "user information"),
        ("https://cdn.example.com@evil.com/a.png", InputForbidden, "user information"),
        ("https://cdn.example.com\\@evil.com/a.png", InvalidLocation, "'\\'"),
        ("https://cdn.example.com/a b.png", InvalidLocation, "whitespace"),
        ("https://cdn.example.com/a.png\n", InvalidLocation, "control characters"),
        ("https:///a.png", InvalidLocation, "no host"),
        ("https://cdn.example.com:99999/a.png", InvalidLocation, "not a valid URL"),
        ("https://bücher.example/a.png", InvalidLocation, "not ASCII"),
    ],
)
def test_parse_input_source_applies_the_url_rules(
    ref: str, error: type[Exception] | None, words: str
) -> None:
    if error is None:
        assert isinstance(parse_input_source(ref, S3, URLS, field="image"), UrlLocation)
        return
    with pytest.raises(error) as info:
        parse_input_source(ref, S3, URLS, field="references[1]")
    assert type(info.value) is error
    message = str(info.value)
    assert message.startswith("references[1]: ")
    assert words in message
    assert "secret" not in message


def test_urls_are_forbidden_while_url_inputs_are_off() -> None:
    with pytest.raises(InputForbidden, match="KLEIN_EDIT_URL_INPUTS__ENABLED is false"):
        parse_input_source("https://cdn.example.com/a.png?sig=s", S3, UrlInputSettings(), field="image")
    # S3 references are unchanged, and other schemes stay malformed.
    assert parse_input_source("a.png", S3, UrlInputSettings(), field="image") == S3Location(
        "in-bucket", "a.png"
    )
    with pytest.raises(InvalidLocation, match="not an s3:// URI"):
        parse_input_source("ftp://cdn.example.com/a.png", S3, URLS, field="image")


def test_adapter_urls_must_name_a_safetensors_file() -> None:
    ok = parse_adapter_source(
        "https://d1.cloudfront.net/l/style.safetensors?sig=1", S3, URLS, field="loras[0]"
    )
    assert isinstance(ok, UrlLocation)
    with pytest.raises(AdapterRefused, match=r"not a \.safetensors or \.sft file"):
        parse_adapter_source(
            "https://d1.cloudfront.net/l/style.bin?x=.safetensors", S3, URLS, field="loras[0]"
        )
    with pytest.raises(InputForbidden):
        parse_adapter_source("https://evil.com/a.safetensors", S3, URLS, field="loras[0]")
    assert parse_adapter_source("style.safetensors", S3, URLS, field="loras[0]") == S3Location(
        "adapters", "style.safetensors"
    )


def test_settings_check_hosts_and_networks() -> None:
    assert UrlInputSettings(allowed_hosts=["CDN.Example.com.", "*.Test"]).allowed_hosts == [
        "cdn.example.com",
        "*.test",
    ]
    for bad in ("https://cdn.example.com", "cdn.example.com:443", "cdn.example.com/x", "a.*.com", "*"):
        with pytest.raises(ValidationError, match="not a host name"):
            UrlInputSettings(allowed_hosts=[bad])
    with pytest.raises(ValidationError, match="not a CIDR"):
        UrlInputSettings(allowed_private_networks=["10.0.0.0/33"])
    with pytest.raises(ValidationError, match="allowed_hosts is empty"):
        UrlInputSettings(enabled=True)

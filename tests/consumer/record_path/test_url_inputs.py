"""Inputs and adapters by https URL on the production record path: the rules (off by default, https only,
allowed hosts), the codes of S3 reads, the same decode path, provenance and logs without the query, and a
URL adapter cached on its second use (on `FakeUrls`, then through the real reader and a loopback origin).
The address policy and the wire-level limits are tested against a real server in
tests/consumer/test_url_fetch.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.url_fetch import UrlFetcher
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from storage import UrlInputSettings
from tests.adapters import adapter_file
from tests.consumer.https_origin import HttpsOrigin
from tests.consumer.record_path.path import RecordPath, png
from tests.tls import TlsFiles

pytestmark = pytest.mark.timeout(60)
CDN = "cdn.example.com"
SIGNATURE = "X-Amz-Signature=f00dfeed"
QUERY = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE&{SIGNATURE}"
URL_INPUTS: dict[str, Any] = {"enabled": True, "allowed_hosts": [CDN, "*.cloudfront.net"]}


def fails_with(path: RecordPath, code: ErrorCode, *words: str) -> None:
    (result,) = path.results()
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    assert result.error.code is code, result.error
    for word in words:
        assert word in result.error.message, result.error.message
    assert SIGNATURE not in result.error.message
    assert not result.error.retryable
    assert not path.dead_letters()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"image": f"https://{CDN}/a.png?{QUERY}"}, ["image", "KLEIN_EDIT_URL_INPUTS__ENABLED is false"]),
        ({"references": [f"https://{CDN}/r.png"]}, ["references[0]", "ENABLED is false"]),
        ({"loras": [{"uri": f"https://{CDN}/style.safetensors"}]}, ["loras[0]", "ENABLED is false"]),
    ],
)
async def test_urls_are_forbidden_by_default(
    make_path: Callable[..., RecordPath], fields: dict[str, Any], words: list[str]
) -> None:
    path = make_path(s3={"adapter_buckets": ["adapters"]})
    image = fields.pop("image", None) or path.stage("base.png", png(64, 64))
    assert await path.handle(path.request(image, **fields))
    fails_with(path, ErrorCode.INPUT_FORBIDDEN, *words)
    assert path.urls.reads == []


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        (f"http://{CDN}/a.png?{QUERY}", ErrorCode.INPUT_FORBIDDEN, ["image", "only https"]),
        (f"https://cdn.example.org/a.png?{QUERY}", ErrorCode.INPUT_FORBIDDEN, ["host 'cdn.example.org'"]),
        (f"https://cloudfront.net/a.png?{QUERY}", ErrorCode.INPUT_FORBIDDEN, ["not allowed"]),
        (f"https://{CDN}/missing.png?{QUERY}", ErrorCode.INPUT_NOT_FOUND, [f"https://{CDN}/missing.png"]),
        (f"https://{CDN}/big.png?{QUERY}", ErrorCode.INPUT_TOO_LARGE, ["over the limit of 20000 bytes"]),
        (f"https://{CDN}/text.png?{QUERY}", ErrorCode.INVALID_IMAGE, [f"image (https://{CDN}/text.png)"]),
    ],
)
async def test_url_inputs_fail_with_the_codes_of_s3_inputs(
    make_path: Callable[..., RecordPath], url: str, code: ErrorCode, words: list[str]
) -> None:
    path = make_path(url_inputs=URL_INPUTS, s3={"max_image_bytes": 20_000})
    path.urls.put(f"https://{CDN}/big.png", b"x" * 20_001)
    path.urls.put(f"https://{CDN}/text.png", b"not an image")
    assert await path.handle(path.request(url))
    fails_with(path, code, *words)


async def test_url_inputs_are_edited_as_s3_inputs_are_and_the_query_is_never_shown(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(url_inputs=URL_INPUTS)
    base, reference = png(64, 64, (200, 40, 40)), png(64, 64, (40, 200, 40))
    path.urls.put(f"https://{CDN}/base.png", base)
    path.urls.put("https://d1.cloudfront.net/ref.png", reference)
    s3_reference = path.stage("ref2.png", png(64, 64))
    request = path.request(
        f"https://{CDN}/base.png?{QUERY}",
        references=[f"https://d1.cloudfront.net/ref.png?{QUERY}#frag", s3_reference],
        seed=7,
    )
    with capture_logs() as logs:
        assert await path.handle(request)
    result = path.result()
    assert result.status is EditStatus.SUCCEEDED, result.error
    assert path.urls.reads == [
        f"https://{CDN}/base.png?{QUERY}",
        f"https://d1.cloudfront.net/ref.png?{QUERY}#frag",
    ]
    assert result.params is not None
    assert result.params.references == 2
    assert result.provenance is not None
    assert [item.uri for item in result.provenance.inputs] == [
        f"https://{CDN}/base.png",
        "https://d1.cloudfront.net/ref.png",
        s3_reference,
    ]
    assert result.provenance.inputs[0].sha256 == hashlib.sha256(base).hexdigest()
    # The presigned query is a secret: in no event the worker sent, no stored metadata, no log line.
    for record in path.producer.sent:
        assert b"X-Amz-Signature" not in (record.value or b"")
    for obj in path.store.objects.values():
        assert all("X-Amz-Signature" not in value for value in obj.metadata.values())
    assert logs
    assert all("X-Amz-Signature" not in repr(event) for event in logs)
    # A redelivery is answered from the stored output with the same provenance, nothing read again.
    assert await path.handle(request)
    again = path.results()[-1]
    assert again.provenance is not None
    assert again.provenance.inputs == result.provenance.inputs
    assert len(path.urls.reads) == 2


async def test_a_url_adapter_is_cached_by_url_and_validator_then_by_content(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(url_inputs=URL_INPUTS)
    image = path.stage("base.png", png(64, 64))
    adapter = f"https://{CDN}/loras/style.safetensors"
    path.urls.put(adapter, adapter_file(seed=5))
    lookups = path.metrics.registry.get_sample_value

    def edit(uri: str) -> Any:
        return path.request(image, seed=3, loras=[{"uri": uri, "scale": 0.8}])

    assert await path.handle(edit(f"{adapter}?{QUERY}"))
    assert await path.handle(edit(f"{adapter}?{QUERY}"))  # the same URL: a conditional read, 304
    assert await path.handle(edit(f"{adapter}?X-Amz-Signature=resigned"))  # re-signed: read, not parsed
    first, second, third = path.results()
    for result in (first, second, third):
        assert result.status is EditStatus.SUCCEEDED, result.error
        assert result.params is not None
        assert [lora.uri for lora in result.params.loras] == [adapter]
    assert len({result.params.loras[0].sha256 for result in (first, second, third) if result.params}) == 1
    assert lookups("klein_edit_adapter_lookups_total", {"result": "hit"}) == 1.0
    assert lookups("klein_edit_adapter_lookups_total", {"result": "miss"}) == 2.0
    assert len(path.urls.reads) == 3


async def test_a_url_adapter_through_the_real_reader_is_cached_on_its_second_use(
    make_path: Callable[..., RecordPath], https_origin: HttpsOrigin, tls_files: TlsFiles
) -> None:
    https_origin.files["style.safetensors"] = adapter_file(seed=5)
    settings = UrlInputSettings(
        enabled=True,
        allowed_hosts=["127.0.0.1"],
        allowed_private_networks=["127.0.0.1/32"],
        ca_bundle=str(tls_files.ca_file),
    )
    async with UrlFetcher(settings) as fetcher:
        path = make_path(urls=fetcher, url_inputs=settings.model_dump())
        image = path.stage("base.png", png(64, 64))
        uri = https_origin.url(f"/files/style.safetensors?{QUERY}")
        for _ in range(2):
            assert await path.handle(path.request(image, seed=3, loras=[{"uri": uri}]))
    first, second = path.results()
    assert first.status is EditStatus.SUCCEEDED, first.error
    assert second.status is EditStatus.SUCCEEDED, second.error
    assert https_origin.hits["/files/style.safetensors"] == 2
    assert https_origin.not_modified["/files/style.safetensors"] == 1  # the second read: 304, no body
    lookups = path.metrics.registry.get_sample_value
    assert lookups("klein_edit_adapter_lookups_total", {"result": "hit"}) == 1.0
    assert second.params is not None
    assert second.params.loras[0].uri == https_origin.url("/files/style.safetensors")

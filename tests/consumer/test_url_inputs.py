"""Inputs and an adapter by https URL through a real worker on the broker: the worker opens its URL reader
with its life (one session, closed on shutdown), reads a presigned-style link from a local https origin
on loopback (a test CA in KLEIN_EDIT_URL_INPUTS__CA_BUNDLE, loopback an allowed network, as an on-premises
CDN's would be), refuses one outside its rules, and never publishes the query. The rules themselves are
tested on the record path (tests/consumer/record_path/test_url_inputs.py) and against the origin
(tests/consumer/test_url_fetch.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.settings import Settings
from pipeline import Editor
from schemas.errors import ErrorCode
from schemas.results import EditStatus
from tests.adapters import adapter_file
from tests.consumer.harness import png_bytes, prepare, publish, read_topic, request, results, running_worker
from tests.consumer.https_origin import HttpsOrigin
from tests.tls import TlsFiles

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
QUERY = "X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=f00dfeed"


async def test_a_worker_reads_inputs_and_adapters_by_url_and_never_publishes_the_query(
    make_settings: Callable[..., Settings],
    tiny_editor: Editor,
    https_origin: HttpsOrigin,
    tls_files: TlsFiles,
) -> None:
    settings = make_settings(
        url_inputs={
            "enabled": True,
            "allowed_hosts": ["127.0.0.1"],
            "allowed_private_networks": ["127.0.0.1/32"],
            "ca_bundle": str(tls_files.ca_file),
        }
    )
    await prepare(settings)
    https_origin.files["base.png"] = png_bytes(96, 80)
    https_origin.files["style.safetensors"] = adapter_file(seed=11)
    image = https_origin.url(f"/files/base.png?{QUERY}")
    lora = {"uri": https_origin.url(f"/files/style.safetensors?{QUERY}")}
    edited = request(settings, image, seed=5, loras=[lora])
    again = request(settings, image, seed=5, loras=[lora])
    refused = request(settings, f"https://localhost:{https_origin.port}/files/base.png?{QUERY}")

    async with running_worker(settings, lambda: tiny_editor):
        await publish(settings, edited)
        await results(settings, count=1, timeout_s=120)  # the adapter is cached before it is used again
        for req in (again, refused):
            await publish(settings, req)
        got = {r.request_id: r for r in await results(settings, count=3, timeout_s=120)}

    first, second, third = got[edited.request_id], got[again.request_id], got[refused.request_id]
    assert first.status is EditStatus.SUCCEEDED, first.error
    assert second.status is EditStatus.SUCCEEDED, second.error
    assert first.provenance is not None
    assert [item.uri for item in first.provenance.inputs] == [https_origin.url("/files/base.png")]
    assert first.params is not None
    assert first.params.loras[0].uri == https_origin.url("/files/style.safetensors")
    assert https_origin.not_modified["/files/style.safetensors"] == 1  # the adapter, cached on second use
    assert third.status is EditStatus.FAILED
    assert third.error is not None
    assert third.error.code is ErrorCode.INPUT_FORBIDDEN
    assert "host 'localhost' is not allowed" in third.error.message
    records = await read_topic(settings, settings.kafka.result_topic, count=3, timeout_s=10)
    assert all(b"X-Amz-Signature" not in (r.value or b"") for r in records)

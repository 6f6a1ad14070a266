"""Provenance rules of one record on the production record path: C2PA signing of every format, a
signing failure retried and never stored unsigned, and adapters recorded also when a redelivery is
answered from the stored object. The files are read back with independent readers: Pillow for XMP,
c2pa-python for the manifest (trusting only the test's own root), hashlib for the inputs.
(The result's provenance block and XMP keep their end-to-end test: tests/consumer/test_provenance.py.)
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pipeline import StandInEditor
from pipeline.config import TINY_RANDOM
from pipeline.signing import ManifestFacts, ManifestSigner, SigningFailed
from schemas.errors import ErrorCode
from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT
from schemas.requests import OutputFormat
from schemas.results import EditStatus
from storage import S3Location
from tests.adapters import adapter_file
from tests.c2pa_chain import SigningChain, make_chain, read_manifest
from tests.consumer.record_path.path import RecordPath, path_settings, png
from tests.inputs import xmp_of

pytestmark = pytest.mark.timeout(120)


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (20, 160, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def signing(chain: SigningChain, tmp_path: Path) -> dict[str, object]:
    """The provenance settings section of a worker with a mounted signing key and chain."""
    key, certs = chain.write(tmp_path)
    return {"signing_key_file": key, "certificate_chain_file": certs}


async def test_a_configured_key_signs_every_output_with_c2pa(
    make_path: Callable[..., RecordPath], tmp_path: Path
) -> None:
    chain = make_chain()
    path = make_path(provenance=signing(chain, tmp_path))
    base, reference = png(64, 96), jpeg(64, 64)
    base_uri, reference_uri = path.stage("base.png", base), path.stage("ref.jpg", reference)
    requests = {
        fmt: path.request(base_uri, references=[reference_uri], output={"format": fmt.value})
        for fmt in OutputFormat
    }
    stripped = path.request(base_uri, output={"metadata": "strip"})
    for req in [*requests.values(), stripped]:
        assert await path.handle(req)
    events = {event.request_id: event for event in path.results()}

    hashes = {hashlib.sha256(base).hexdigest(), hashlib.sha256(reference).hexdigest()}
    for fmt, req in requests.items():
        event = events[req.request_id]
        assert event.status is EditStatus.SUCCEEDED, event.error
        assert event.provenance is not None
        assert event.output is not None
        assert (event.provenance.c2pa, event.provenance.xmp) == (True, True)
        data = path.store.read(event.output.uri)
        state, manifest = read_manifest(data, fmt.content_type, chain.root_pem)
        assert state == "Trusted", fmt
        (actions,) = [a["data"]["actions"] for a in manifest["assertions"] if a["label"] == "c2pa.actions.v2"]
        assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
        assert actions[1]["digitalSourceType"] == DIGITAL_SOURCE_TYPE_EDIT
        assert actions[1]["softwareAgent"]["name"] == TINY_RANDOM
        assert actions[1]["softwareAgent"]["version"] == event.provenance.model.revision
        ingredients = {item["instance_id"].removeprefix("sha256:") for item in manifest["ingredients"]}
        assert ingredients == hashes == {item.sha256 for item in event.provenance.inputs}
        xmp = xmp_of(data)
        assert xmp is not None
        assert xmp["RequestId"] == req.request_id

    plain = events[stripped.request_id]
    assert plain.provenance is not None
    assert plain.output is not None
    assert (plain.provenance.c2pa, plain.provenance.xmp) == (False, False)
    data = path.store.read(plain.output.uri)
    assert xmp_of(data) is None
    assert b"c2pa" not in data


class FaultySigner:
    """Fails for request ids containing "broken" always, "flaky" the first time; else signs for real."""

    def __init__(self, inner: ManifestSigner) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}

    def sign(self, data: bytes, fmt: OutputFormat, facts: ManifestFacts) -> bytes:
        calls = self.calls[facts.request_id] = self.calls.get(facts.request_id, 0) + 1
        if "broken" in facts.request_id or ("flaky" in facts.request_id and calls == 1):
            raise SigningFailed("C2PA signing failed: HSM unreachable (injected)")
        return self._inner.sign(data, fmt, facts)


async def test_a_signing_failure_is_retried_and_never_stores_an_unsigned_output(tmp_path: Path) -> None:
    settings = path_settings(provenance=signing(make_chain(), tmp_path), worker={"max_attempts": 3})
    real = ManifestSigner.from_settings(settings.provenance)
    assert real is not None
    signer = FaultySigner(real)
    path = RecordPath(settings, StandInEditor(edit_ms=1), signer=signer)
    try:
        image = path.stage("a.png", png(64, 64))
        assert await path.handle(path.request(image, request_id="flaky-1"), key=b"flaky-1")
        assert await path.handle(path.request(image, request_id="broken-1"), key=b"broken-1")
    finally:
        path.close()

    events = {event.request_id: event for event in path.results()}
    recovered = events["flaky-1"]
    assert recovered.status is EditStatus.SUCCEEDED
    assert recovered.attempt == 2
    assert recovered.provenance is not None
    assert recovered.provenance.c2pa is True
    failed = events["broken-1"]
    assert failed.status is EditStatus.FAILED
    assert failed.error is not None
    assert failed.error.code is ErrorCode.INTERNAL
    assert failed.error.retryable is True
    assert "C2PA signing failed" in failed.error.message
    assert (failed.output, failed.provenance) == (None, None)
    assert failed.attempt == settings.worker.max_attempts  # retried, then dead-lettered
    assert signer.calls["broken-1"] == settings.worker.max_attempts
    (dead,) = path.dead_letters()
    assert dead.key == b"broken-1"  # the request's own key, as producers key by request id
    assert not any("broken-1" in key for key in path.store.objects)
    assert any("flaky-1" in key for key in path.store.objects)


async def test_adapters_are_part_of_the_provenance_also_when_redelivered(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(s3={"adapter_buckets": ["adapters"]})
    lora = adapter_file(seed=5)
    lora_uri = S3Location("adapters", "brand.safetensors").uri
    path.store.put_object(S3Location("adapters", "brand.safetensors"), lora)
    req = path.request(path.stage("a.png", png(64, 64)), loras=[{"uri": lora_uri, "scale": 0.5}])
    assert await path.handle(req)
    runs = path.gpu_runs
    assert runs == 1
    assert await path.handle(req)  # answered from the stored object
    first, again = path.results()

    assert first.status is EditStatus.SUCCEEDED, first.error
    assert first.params is not None
    assert first.provenance is not None
    assert first.provenance.adapters == first.params.loras
    (adapter,) = first.provenance.adapters
    assert (adapter.uri, adapter.scale) == (lora_uri, 0.5)
    assert adapter.sha256 == hashlib.sha256(lora).hexdigest()
    assert again.provenance == first.provenance
    assert path.gpu_runs == runs

"""C2PA signing: the manifest an output carries, read back and validated with c2pa-python."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import ProvenanceSettings
from pipeline.identity import ModelIdentity
from pipeline.images import encode_image
from pipeline.signing import (
    Ingredient,
    ManifestFacts,
    ManifestSigner,
    SigningFailed,
    SigningSetupError,
)
from schemas.errors import ErrorCode
from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT
from schemas.requests import OutputFormat
from tests.c2pa_chain import SigningChain, make_chain, read_manifest

IDENTITY = ModelIdentity(
    model="black-forest-labs/FLUX.2-klein-base-9B",
    revision="c" * 40,
    revision_source="hub",
    dtype="bfloat16",
    quantization="none",
    compiled=False,
    attention="native",
    scheduler="FlowMatchEulerDiscreteScheduler",
)
BASE, REFERENCE = hashlib.sha256(b"base").hexdigest(), hashlib.sha256(b"reference").hexdigest()
FACTS = ManifestFacts(
    request_id="r-1",
    identity=IDENTITY,
    ingredients=[
        Ingredient("image", BASE, "image/jpeg"),
        Ingredient("references[0]", REFERENCE, "image/png"),
    ],
    software_version="0.1.0",
)


@pytest.fixture(scope="module")
def chain() -> SigningChain:
    return make_chain()


@pytest.fixture(scope="module")
def signer(chain: SigningChain) -> ManifestSigner:
    made = ManifestSigner.from_settings(
        ProvenanceSettings(signing_key=chain.key_pem, certificate_chain=chain.chain_pem)  # type: ignore[arg-type]
    )
    assert made is not None
    return made


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_a_signed_output_states_the_edit_and_validates_against_the_chain(
    fmt: OutputFormat, chain: SigningChain, signer: ManifestSigner
) -> None:
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    unsigned = encode_image(Image.new("RGB", (64, 64), (30, 144, 255)), fmt, xmp=xmp)
    signed = signer.sign(unsigned, fmt, FACTS)
    state, manifest = read_manifest(signed, fmt.content_type, chain.root_pem)
    assert state == "Trusted"
    assert manifest["claim_generator_info"][0]["name"] == "klein-edit"
    (actions,) = [a["data"]["actions"] for a in manifest["assertions"] if a["label"] == "c2pa.actions.v2"]
    assert [action["action"] for action in actions] == ["c2pa.opened", "c2pa.edited"]
    edited = actions[1]
    assert edited["digitalSourceType"] == DIGITAL_SOURCE_TYPE_EDIT
    assert edited["softwareAgent"] == {"name": IDENTITY.model, "version": IDENTITY.revision}
    ingredients = {item["title"]: item for item in manifest["ingredients"]}
    assert ingredients["image"]["instance_id"] == f"sha256:{BASE}"
    assert ingredients["image"]["relationship"] == "parentOf"
    assert ingredients["references[0]"]["instance_id"] == f"sha256:{REFERENCE}"
    assert ingredients["references[0]"]["relationship"] == "inputTo"
    image = Image.open(BytesIO(signed))
    image.load()
    assert "xmp" in image.info  # signing keeps the XMP marking


def test_another_root_does_not_trust_it(signer: ManifestSigner) -> None:
    signed = signer.sign(encode_image(Image.new("RGB", (64, 64)), OutputFormat.PNG), OutputFormat.PNG, FACTS)
    state, _ = read_manifest(signed, "image/png", make_chain().root_pem)
    assert state != "Trusted"


def test_files_configure_the_signer(chain: SigningChain, tmp_path: Path) -> None:
    key, certs = chain.write(tmp_path)
    settings = ProvenanceSettings(signing_key_file=key, certificate_chain_file=certs)
    assert ManifestSigner.from_settings(settings) is not None
    assert ManifestSigner.from_settings(ProvenanceSettings()) is None


def test_a_key_that_does_not_match_the_certificate_stops_start_up(chain: SigningChain) -> None:
    other = make_chain()
    with pytest.raises(SigningSetupError, match="cannot sign"):
        ManifestSigner.from_settings(
            ProvenanceSettings(signing_key=other.key_pem, certificate_chain=chain.chain_pem)  # type: ignore[arg-type]
        )


def test_a_self_signed_ca_is_not_a_signer(chain: SigningChain) -> None:
    with pytest.raises(SigningSetupError):
        ManifestSigner.from_settings(
            ProvenanceSettings(signing_key=chain.key_pem, certificate_chain=chain.root_pem)  # type: ignore[arg-type]
        )


def test_key_and_chain_come_together() -> None:
    with pytest.raises(ValueError, match="both a signing key"):
        ProvenanceSettings(certificate_chain="-----BEGIN CERTIFICATE-----")


def test_a_failure_is_internal_and_retryable(signer: ManifestSigner) -> None:
    with pytest.raises(SigningFailed) as caught:
        signer.sign(b"not an image", OutputFormat.PNG, FACTS)
    assert caught.value.code is ErrorCode.INTERNAL
    assert caught.value.retryable is True

"""Signed C2PA manifests (Content Credentials) on outputs, through c2pa-python.

A manifest states: the base image was opened (`c2pa.opened`, parent ingredient) and edited by a trained
model (`c2pa.edited`, IPTC digital source type `compositeWithTrainedAlgorithmicMedia`, the model as
`softwareAgent` with its revision); the references are `inputTo` ingredients of that edit. Ingredients are
named by the SHA-256 of the input's bytes (`instance_id` "sha256:<hex>") and carry no thumbnail: the
inputs' pixels never leave the worker. `c2pa.created` is not used: every edit has a parent.

Signing is blocking, CPU-only and takes milliseconds; the store stage runs it on an I/O thread. A failure
is `SigningFailed` (INTERNAL, retryable): the output is then not stored at all, so nothing unsigned is
ever published where a signed output is expected.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.config import ProvenanceSettings, SigningAlgorithm
from pipeline.errors import PipelineError
from pipeline.identity import ModelIdentity
from schemas.errors import ErrorCode
from schemas.provenance import DIGITAL_SOURCE_TYPE_EDIT
from schemas.requests import OutputFormat

CLAIM_GENERATOR = "klein-edit"
# No thumbnails: they would copy the inputs' pixels into every output and cost encode time.
_C2PA_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


class SigningSetupError(Exception):
    """The configured key and certificate chain cannot sign (unreadable, mismatched, rejected by c2pa).
    Raised at start-up; the message names the setting to fix."""


class SigningFailed(PipelineError):
    """Signing one output failed; the output is not stored. Retried: the cause may be transient."""

    code = ErrorCode.INTERNAL
    retryable = True


@dataclass(frozen=True)
class Ingredient:
    """One input of an edit: `name` as in the request ("image", "references[0]"), the hex SHA-256 of its
    bytes, and its MIME type when known."""

    name: str
    sha256: str
    mime_type: str | None = None


@dataclass(frozen=True)
class ManifestFacts:
    """What the manifest of one output says; `ingredients` lists the base image first."""

    request_id: str
    identity: ModelIdentity
    ingredients: Sequence[Ingredient]
    software_version: str
    digital_source_type: str = DIGITAL_SOURCE_TYPE_EDIT


def manifest_definition(facts: ManifestFacts, fmt: OutputFormat) -> dict[str, Any]:
    """The c2pa manifest definition (JSON object) for an output of format `fmt`."""
    base, *references = facts.ingredients
    ingredients = [_ingredient(base, "parentOf")]
    ingredients += [_ingredient(reference, "inputTo") for reference in references]
    edited: dict[str, Any] = {
        "action": "c2pa.edited",
        "digitalSourceType": facts.digital_source_type,
        "softwareAgent": {"name": facts.identity.model, "version": facts.identity.revision},
        "description": f"klein-edit request {facts.request_id}",
    }
    if references:
        edited["parameters"] = {"ingredientIds": [reference.name for reference in references]}
    return {
        "claim_generator_info": [{"name": CLAIM_GENERATOR, "version": facts.software_version}],
        "title": f"{facts.request_id}.{fmt.extension}",
        "format": fmt.content_type,
        "ingredients": ingredients,
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {"action": "c2pa.opened", "parameters": {"ingredientIds": [base.name]}},
                        edited,
                    ]
                },
            }
        ],
    }


def _ingredient(ingredient: Ingredient, relationship: str) -> dict[str, Any]:
    described: dict[str, Any] = {
        "title": ingredient.name,
        "relationship": relationship,
        "instance_id": f"sha256:{ingredient.sha256}",
        "label": ingredient.name,
    }
    if ingredient.mime_type:
        described["format"] = ingredient.mime_type
    return described


class ManifestSigner:
    """Embeds a signed C2PA manifest into encoded outputs. Thread-safe: every call builds its own
    c2pa objects (they are single-use)."""

    def __init__(
        self,
        *,
        key_pem: str,
        chain_pem: str,
        algorithm: SigningAlgorithm = "es256",
        timestamp_url: str | None = None,
    ) -> None:
        self._key_pem = key_pem
        self._chain_pem = chain_pem
        self._algorithm = algorithm
        self._timestamp_url = timestamp_url
        self._c2pa: Any = importlib.import_module("c2pa")

    @classmethod
    def from_settings(cls, settings: ProvenanceSettings) -> ManifestSigner | None:
        """The signer the settings configure (checked with a probe signature), or None when signing is
        off. Raises `SigningSetupError` naming the setting when the key or chain cannot be used."""
        if not settings.signing_enabled:
            return None
        if settings.signing_key_file is not None:
            key = _read(settings.signing_key_file, "KLEIN_EDIT_PROVENANCE__SIGNING_KEY_FILE")
        else:
            key = settings.signing_key.get_secret_value() if settings.signing_key else ""
        if settings.certificate_chain_file is not None:
            chain = _read(settings.certificate_chain_file, "KLEIN_EDIT_PROVENANCE__CERTIFICATE_CHAIN_FILE")
        else:
            chain = settings.certificate_chain or ""
        if "PRIVATE KEY-----" not in key:
            raise SigningSetupError("KLEIN_EDIT_PROVENANCE__SIGNING_KEY: not a PEM private key")
        if "-----BEGIN CERTIFICATE-----" not in chain:
            raise SigningSetupError("KLEIN_EDIT_PROVENANCE__CERTIFICATE_CHAIN: no PEM certificate in it")
        signer = cls(
            key_pem=key,
            chain_pem=chain,
            algorithm=settings.signing_algorithm,
            timestamp_url=settings.timestamp_url,
        )
        signer.check()
        return signer

    def check(self) -> None:
        """Sign a small probe image; raises `SigningSetupError` if the key, chain or algorithm is unusable
        (c2pa verifies each signature it makes, so a key that does not match the certificate fails here)."""
        probe = BytesIO()
        Image.new("RGB", (16, 16)).save(probe, format="PNG")
        facts = ManifestFacts(
            request_id="signing-probe",
            identity=ModelIdentity(
                model="probe",
                revision="probe",
                revision_source="none",
                dtype="none",
                quantization="none",
                compiled=False,
                attention="none",
                scheduler="none",
            ),
            ingredients=[Ingredient("image", "0" * 64)],
            software_version="probe",
        )
        try:
            self.sign(probe.getvalue(), OutputFormat.PNG, facts)
        except SigningFailed as exc:
            raise SigningSetupError(
                f"the C2PA signing key and certificate chain cannot sign ({exc.message}); check that the "
                "key matches the first certificate, the algorithm (KLEIN_EDIT_PROVENANCE__SIGNING_ALGORITHM="
                f"{self._algorithm}) matches the key, and the certificate allows signing (digitalSignature "
                "key usage, an extended key usage such as emailProtection, not a CA)"
            ) from exc

    def sign(self, data: bytes, fmt: OutputFormat, facts: ManifestFacts) -> bytes:
        """`data` (an encoded output of format `fmt`) with a signed manifest embedded; raises
        `SigningFailed` (INTERNAL, retryable) on any failure."""
        c2pa = self._c2pa
        try:
            info = c2pa.C2paSignerInfo(
                c2pa.C2paSigningAlg[self._algorithm.upper()],
                self._chain_pem.encode(),
                self._key_pem.encode(),
                self._timestamp_url.encode() if self._timestamp_url else None,
            )
            signer = c2pa.Signer.from_info(info)
            context = c2pa.Context(c2pa.Settings.from_dict(_C2PA_SETTINGS))
            builder = c2pa.Builder(manifest_definition(facts, fmt), context)
            signed = BytesIO()
            builder.sign(signer, fmt.content_type, BytesIO(data), signed)
        except (c2pa.C2paError, ValueError, TypeError, OSError) as exc:
            raise SigningFailed(f"C2PA signing failed: {type(exc).__name__}: {exc}") from exc
        return signed.getvalue()


def _read(path: Path, setting: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningSetupError(f"{setting}: cannot read {path}: {exc}") from exc

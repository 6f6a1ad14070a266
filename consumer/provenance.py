"""Provenance of outputs: the result event's `provenance`, the marks in the file, the stored record.

`ProvenanceRecorder` assembles what the editor knows about its model (`Editor.identity`), the runtime
versions, the inputs' SHA-256 and the edit's parameters; marks the encoded output (XMP, and a signed C2PA
manifest when a signer is configured) unless the request said `output.metadata: "strip"`. The output
object's metadata keeps the provenance (`consumer.sink`), so a redelivered request is answered with the
provenance of the worker that made the object, not of the one answering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from pipeline import Editor, ModelIdentity, encode_image, runtime_versions
from pipeline.marking import OutputMarking, xmp_packet
from pipeline.signing import Ingredient, ManifestFacts
from schemas.provenance import AdapterInfo, InputDigest, ModelRef, Provenance
from schemas.requests import OutputFormat
from schemas.results import EditParams


class OutputSigner(Protocol):
    """Embeds a signed C2PA manifest (`pipeline.signing.ManifestSigner` is the real one); raises
    `SigningFailed` (INTERNAL, retryable) on any failure."""

    def sign(self, data: bytes, fmt: OutputFormat, facts: ManifestFacts) -> bytes: ...


@dataclass(frozen=True)
class FetchedInput:
    """One input as fetched: `name` as in the request ("image", "references[0]"), its URI, the hex
    SHA-256 of its bytes and its MIME type (None when Pillow has none for the format)."""

    name: str
    uri: str
    sha256: str
    mime_type: str | None = None


@dataclass(frozen=True)
class MarkedOutput:
    data: bytes
    xmp: bool
    c2pa: bool


def adapters_of(params: EditParams) -> list[AdapterInfo] | None:
    """The adapters (LoRAs) an edit used, as `params.loras` reports them; None when there are none."""
    return list(params.loras) or None


class ProvenanceRecorder:
    def __init__(self, editor: Editor, *, signer: OutputSigner | None = None) -> None:
        self._editor = editor
        self._signer = signer
        self._versions = runtime_versions()

    @property
    def identity(self) -> ModelIdentity:
        return self._editor.identity

    @property
    def signing(self) -> bool:
        return self._signer is not None

    def encode(
        self,
        image: Image.Image,
        fmt: OutputFormat,
        *,
        alpha: Image.Image | None,
        request_id: str,
        inputs: Sequence[FetchedInput],
        marked: bool,
        quality: int | None = None,
        lossless: bool = False,
    ) -> MarkedOutput:
        """Encode `image`; when `marked`, with XMP and (given a signer) a signed C2PA manifest.
        Blocking: call on an I/O thread. Raises `SigningFailed` rather than return an unsigned output."""
        identity = self.identity
        xmp = None
        if marked:
            xmp = xmp_packet(
                OutputMarking(
                    request_id=request_id,
                    model=identity.model,
                    revision=identity.revision,
                    software=f"klein-edit {self._versions.get('klein-edit', 'unknown')}",
                )
            )
        data = encode_image(image, fmt, alpha=alpha, xmp=xmp, quality=quality, lossless=lossless)
        if not marked or self._signer is None:
            return MarkedOutput(data=data, xmp=marked, c2pa=False)
        facts = ManifestFacts(
            request_id=request_id,
            identity=identity,
            ingredients=[Ingredient(item.name, item.sha256, item.mime_type) for item in inputs],
            software_version=self._versions.get("klein-edit", "unknown"),
        )
        return MarkedOutput(data=self._signer.sign(data, fmt, facts), xmp=True, c2pa=True)

    def provenance(
        self, params: EditParams, inputs: Sequence[FetchedInput], *, xmp: bool, c2pa: bool
    ) -> Provenance:
        identity = self.identity
        return Provenance(
            model=ModelRef(
                id=identity.model, revision=identity.revision, revision_source=identity.revision_source
            ),
            dtype=identity.dtype,
            quantization=identity.quantization,
            compiled=identity.compiled,
            attention=identity.attention,
            versions=dict(self._versions),
            inputs=[InputDigest(uri=item.uri, sha256=item.sha256) for item in inputs],
            seed=params.seed,
            scheduler=identity.scheduler,
            adapters=adapters_of(params),
            xmp=xmp,
            c2pa=c2pa,
        )

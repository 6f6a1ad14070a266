"""Provenance of one output (part of edit-completed v1, additive): which model made it, how, from what.

Filled in by the worker for every succeeded edit; the same facts, where they describe the file, are also
embedded in the output itself (XMP, and a signed C2PA manifest when the operator configures a key), unless
the request asked for `output.metadata: "strip"`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas._base import WireModel

# IPTC Digital Source Type vocabulary (https://cv.iptc.org/newscodes/digitalsourcetype/): every edit here
# starts from a base image taken to be a real photo and changes it with a trained model.
DIGITAL_SOURCE_TYPE_EDIT = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
)

RevisionSource = Literal["hub", "directory", "none"]


class AdapterInfo(WireModel):
    """One LoRA adapter an edit used, traceable to its exact bytes (`params.loras`, `provenance.adapters`)."""

    uri: str
    scale: float
    sha256: str = Field(description="Hex SHA-256 of the adapter file.")
    bytes: int = Field(description="Size of the adapter file in bytes.")


class ModelRef(WireModel):
    id: str = Field(description="The model as configured: a Hub id, a local directory or 'tiny-random'.")
    revision: str = Field(
        description="hub: the commit hash of the cached snapshot that was loaded. directory: the hex "
        "SHA-256 over the directory's JSON files (model_index.json, component configs, weight indexes, "
        "scheduler and tokenizer files; never the weights), see docs/provenance.md. none: no model files."
    )
    revision_source: RevisionSource


class InputDigest(WireModel):
    uri: str = Field(description="s3://bucket/key of the input as read.")
    sha256: str = Field(description="Hex SHA-256 of the object's bytes as fetched (as output.sha256).")


class Provenance(WireModel):
    """Where an output came from. Per-process values are also labels of `klein_edit_build_info`."""

    model: ModelRef
    dtype: str = Field(description="Compute dtype of the pipeline, e.g. 'bfloat16', 'float32'.")
    quantization: Literal["none", "float8"] = Field(description="Of the transformer's linear layers.")
    compiled: bool = Field(description="The transformer blocks ran under torch.compile.")
    attention: str = Field(description="The attention backend used, by diffusers' name ('native': SDPA).")
    versions: dict[str, str] = Field(
        description="Installed versions by distribution name: klein-edit, diffusers, transformers, torch; "
        "'cuda' is the CUDA runtime torch was built with, absent on CPU-only builds."
    )
    inputs: list[InputDigest] = Field(description="The base image first, then the references in order.")
    seed: int
    scheduler: str = Field(
        description="Class name of the diffusers scheduler, e.g. FlowMatchEulerDiscreteScheduler."
    )
    adapters: list[AdapterInfo] | None = Field(
        default=None, description="The adapters (LoRAs) applied, as params.loras; null when none."
    )
    digital_source_type: str = Field(
        default=DIGITAL_SOURCE_TYPE_EDIT,
        description="The IPTC digital source type the output is marked with.",
    )
    xmp: bool = Field(description="The object carries XMP with the IPTC digital source type.")
    c2pa: bool = Field(description="The object carries a C2PA manifest signed with the operator's key.")
    moderation: ModelRef | None = Field(
        default=None, description="The moderation classifier that passed the output; null when off."
    )

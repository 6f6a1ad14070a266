"""Image editing with FLUX.2 [klein] base: decoding inputs, running edits, loading the model.

The consumer depends on the `Editor` protocol; `KleinEditor` is the real implementation and
`StandInEditor` a model-free one. This package imports nothing from `storage` or `consumer`.
"""

from __future__ import annotations

from pipeline import errors
from pipeline.adapters import ActiveAdapter, AdapterWeights
from pipeline.config import PipelineSettings
from pipeline.editor import EditJob, Editor, EditOutput, KleinEditor
from pipeline.errors import (
    DeviceFailure,
    EditCanceled,
    GpuOutOfMemory,
    ImageTooLarge,
    InvalidAdapter,
    InvalidImage,
    ModelLoadError,
    PipelineError,
    PromptTooLong,
)
from pipeline.identity import ModelIdentity, runtime_versions
from pipeline.images import (
    DecodedImage,
    Geometry,
    check_edit_input,
    decode_image,
    encode_image,
    keeps_alpha,
    megapixels,
    plan_geometry,
    to_conditioning_size,
)
from pipeline.standin import StandInEditor

__all__ = [
    "ActiveAdapter",
    "AdapterWeights",
    "DecodedImage",
    "DeviceFailure",
    "EditCanceled",
    "EditJob",
    "EditOutput",
    "Editor",
    "Geometry",
    "GpuOutOfMemory",
    "ImageTooLarge",
    "InvalidAdapter",
    "InvalidImage",
    "KleinEditor",
    "ModelIdentity",
    "ModelLoadError",
    "PipelineError",
    "PipelineSettings",
    "PromptTooLong",
    "StandInEditor",
    "check_edit_input",
    "decode_image",
    "encode_image",
    "errors",
    "keeps_alpha",
    "megapixels",
    "plan_geometry",
    "runtime_versions",
    "to_conditioning_size",
]

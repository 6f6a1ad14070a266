"""Image editing with FLUX.2 [klein] base: decoding inputs, running edits, loading the model.

The consumer depends on the `Editor` protocol; `KleinEditor` is the real implementation and
`StandInEditor` a model-free one. This package imports nothing from `storage` or `consumer`.

Importing the package imports none of its modules: each public name is loaded from its module on
first use (PEP 562, as `diffusers` does), so `import pipeline.config` or a command line's `--help`
does not pay for torch (about 2 s). `from pipeline import KleinEditor` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each module and the public names it defines: the one table the lazy look-up reads.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "adapters": ("ActiveAdapter", "AdapterWeights"),
    "config": ("PipelineSettings",),
    "editor": ("EditJob", "Editor", "EditOutput", "KleinEditor"),
    "errors": (
        "DeviceFailure",
        "EditCanceled",
        "GpuOutOfMemory",
        "ImageTooLarge",
        "InvalidAdapter",
        "InvalidImage",
        "ModelLoadError",
        "PipelineError",
        "PromptTooLong",
    ),
    "identity": ("ModelIdentity", "runtime_versions"),
    "images": (
        "DecodedImage",
        "Geometry",
        "check_edit_input",
        "decode_image",
        "encode_image",
        "keeps_alpha",
        "megapixels",
        "plan_geometry",
        "to_conditioning_size",
    ),
    "standin": ("StandInEditor",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

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


def __getattr__(name: str) -> Any:
    """Loads a public name's module on first use and caches the name here (PEP 562)."""
    if name == "errors":
        value: Any = importlib.import_module("pipeline.errors")
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(f"pipeline.{_MODULE_OF[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

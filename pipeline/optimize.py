"""Speed and memory options applied to a loaded pipeline: float8 weights, regional compile, text encoder
placement. All are off by default; each maps to one `PipelineSettings` field.

torchao is optional (it is only needed for float8) and is imported lazily so that a missing install is
a clear `ModelLoadError` at startup rather than an import error somewhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pipeline.config import PipelineSettings
from pipeline.errors import ModelLoadError

# Small or precision-sensitive transformer layers stay in bf16: quantizing them saves nothing measurable
# and the modulation/embedding layers steer every token.
TRANSFORMER_SKIP = (
    "modulation",
    "time_guidance_embed",
    "norm_out",
    "x_embedder",
    "context_embedder",
    "proj_out",
)
TEXT_ENCODER_SKIP = ("lm_head", "embed_tokens")


def apply_options(pipe: Any, settings: PipelineSettings) -> list[str]:
    """Apply the options to a pipeline built directly on its device (the benchmark's random pipeline).

    The loader does not use this: `pipeline.loader.place_components` quantizes each piece as it is placed,
    then `KleinEditor.load` calls `compile_if_enabled`. Returns the option names, for logs and benchmarks.
    """
    if settings.quantize_float8:
        quantize_float8(pipe.transformer, skip=TRANSFORMER_SKIP)
    if settings.text_encoder_placement == "float8":
        quantize_float8(pipe.text_encoder, skip=TEXT_ENCODER_SKIP)
    compile_if_enabled(pipe, settings)
    return option_names(settings)


def option_names(settings: PipelineSettings) -> list[str]:
    """The speed and memory options `settings` turns on, by name (for logs, metrics and benchmarks)."""
    names: list[str] = []
    if settings.quantize_float8:
        names.append("float8")
    if settings.text_encoder_placement == "float8":
        names.append("text_encoder_float8")
    elif settings.text_encoder_placement == "cpu_offload":
        names.append("text_encoder_cpu_offload")
    if settings.compile:
        names.append("compile")
    return names


def compile_if_enabled(pipe: Any, settings: PipelineSettings) -> None:
    if settings.compile:
        compile_transformer(pipe.transformer)


def quantize_float8(module: torch.nn.Module, *, skip: tuple[str, ...] = (), prefix: str = "") -> int:
    """torchao dynamic float8 (per-row scales) on the eligible Linear layers; returns how many.

    `prefix` is `module`'s qualified name inside its component, so `skip` matches the same layers whether
    a whole component or one of its blocks is quantized.
    """
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise ModelLoadError(
            "float8 needs torchao, which is not installed: `pip install torchao` (matching your torch "
            "version), or turn float8 off (KLEIN_EDIT_PIPELINE__QUANTIZE_FLOAT8=false, "
            "KLEIN_EDIT_PIPELINE__TEXT_ENCODER_PLACEMENT=gpu)"
        ) from exc
    eligible = float8_filter(skip, prefix)
    count = sum(1 for fqn, sub in module.named_modules() if eligible(sub, fqn))
    try:
        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=eligible)
    except Exception as exc:
        raise ModelLoadError(
            f"float8 quantization failed ({type(exc).__name__}: {exc}); it needs a GPU with float8 support "
            "(compute capability 8.9+, e.g. L4, H100, H200)"
        ) from exc
    return count


def float8_filter(skip: tuple[str, ...], prefix: str = "") -> Callable[[torch.nn.Module, str], bool]:
    def eligible(module: torch.nn.Module, fqn: str) -> bool:
        fqn = ".".join(part for part in (prefix, fqn) if part)
        # float8 GEMMs need both dimensions divisible by 16.
        return (
            isinstance(module, torch.nn.Linear)
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
            and not any(part in fqn for part in skip)
        )

    return eligible


def compile_transformer(transformer: torch.nn.Module) -> None:
    """Regional compile: each repeated block once, which compiles far faster than the whole model."""
    compile_blocks = getattr(transformer, "compile_repeated_blocks", None)
    if callable(compile_blocks) and getattr(transformer, "_repeated_blocks", None):
        compile_blocks(fullgraph=True)
        return
    for name in ("transformer_blocks", "single_transformer_blocks"):
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            for block in blocks:
                block.compile(fullgraph=True)

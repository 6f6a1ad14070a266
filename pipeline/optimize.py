"""Speed and memory options applied to a loaded pipeline: float8 weights, regional compile, text encoder
placement. All are off by default; each maps to one `PipelineSettings` field.

torchao is optional (it is only needed for float8) and is imported lazily so that a missing install is
a clear `ModelLoadError` at startup rather than an import error somewhere else.
"""

from __future__ import annotations

import threading
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


def apply_options(pipe: Any, settings: PipelineSettings, counter: CompileCounter | None = None) -> list[str]:
    """Apply the options to a pipeline built directly on its device (the benchmark's random pipeline).

    The loader does not use this: `pipeline.loader.place_components` quantizes each piece as it is placed,
    then `KleinEditor.load` calls `compile_if_enabled`. Returns the option names, for logs and benchmarks;
    `counter` counts the compilations when compile is on.
    """
    if settings.quantize_float8:
        quantize_float8(pipe.transformer, skip=TRANSFORMER_SKIP)
    if settings.text_encoder_placement == "float8":
        quantize_float8(pipe.text_encoder, skip=TEXT_ENCODER_SKIP)
    if settings.compile:
        compile_transformer(pipe.transformer, counter)
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


def compile_if_enabled(pipe: Any, settings: PipelineSettings) -> CompileCounter | None:
    """Regional compile when `settings.compile`; returns the counter of its compilations (else None)."""
    if not settings.compile:
        return None
    return compile_transformer(pipe.transformer)


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


class CompileCounter:
    """A `torch.compile` backend that counts its compilations, then hands the graph to `inner`.

    Dynamo calls the backend once per graph it compiles: the first compile of each block class and every
    recompile after a guard failure. `inner` is a backend name ("inductor" in production; "eager" in the
    CPU tests, where only the count matters) or a backend callable.
    """

    def __init__(self, inner: str | Callable[..., Any] = "inductor") -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Graphs compiled so far (first compiles and recompiles)."""
        with self._lock:
            return self._count

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        with self._lock:
            self._count += 1
        backend: Any = self._inner
        if isinstance(backend, str):
            from torch._dynamo import lookup_backend

            backend = lookup_backend(backend)
        return backend(graph, example_inputs)


def compile_transformer(
    transformer: torch.nn.Module, counter: CompileCounter | None = None
) -> CompileCounter:
    """Regional compile: each repeated block class compiles once, far faster than the whole model.

    The sequence dimension is marked dynamic on every block call (`mark_sequence_dynamic`), so one graph
    per block class serves every output size and reference count: serving never recompiles after the
    first edit. Blocks of one class share the graph (their weights are graph inputs). Returns the counter
    of compilations (`counter`, or a new one around inductor).
    """
    counter = counter if counter is not None else CompileCounter()
    for name in BLOCK_LISTS:
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            for block in blocks:
                _compile_block(block, counter)
    return counter


BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def _compile_block(block: torch.nn.Module, counter: CompileCounter) -> None:
    compiled = torch.compile(block.forward, fullgraph=True, backend=counter)

    def forward(*args: Any, **kwargs: Any) -> Any:
        mark_sequence_dynamic(args, kwargs)
        return compiled(*args, **kwargs)

    # An instance attribute: nn.Module.__call__ runs hooks, then `self.forward`, i.e. this wrapper.
    block.forward = forward  # type: ignore[method-assign]
    block.klein_edit_compiled = True  # type: ignore[assignment]


def mark_sequence_dynamic(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Mark the token dimension of a Flux2 block's inputs dynamic before dynamo sees them.

    `hidden_states` is [batch, tokens, dim] (image tokens in a double-stream block, text + image in a
    single-stream one); `image_rotary_emb` is (cos, sin), each [text + image tokens, head_dim]. The token
    counts change with the output size and the number and size of the references; nothing else does
    (batch 1, 512 text tokens, fixed widths). `maybe_mark_dynamic` lets dynamo specialize if it must.
    """
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
        torch._dynamo.maybe_mark_dynamic(hidden, 1)
    rotary = kwargs.get("image_rotary_emb")
    if isinstance(rotary, tuple):
        for tensor in rotary:
            if isinstance(tensor, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)

"""The attention kernel, chosen at start-up by `PipelineSettings.attention` through diffusers' dispatcher.

Backends (our name -> diffusers 0.42.1 `AttentionBackendName`):

    native  -> "native"        torch scaled_dot_product_attention (SDPA picks its own kernel); the reference
    cudnn   -> "_native_cudnn" SDPA forced to cuDNN attention (CUDA)
    flash3  -> "_flash_3"      FlashAttention-3 (Hopper; `flash_attn_interface`, built from source)
    sage    -> "sage"          SageAttention (`sageattention` package; INT8 QK, FP8 PV on Hopper)

Every backend other than `native` must pass a numerical check before it is used: one single-stream
transformer block's output with the backend against the same block with SDPA, on the same random
inputs at the serving dtype, must satisfy max |out - ref| <= tolerance * max(1, max |ref|)
(`attention_tolerance`, default 0.02). `auto` tries the installed candidates, keeps those that pass,
and picks the fastest on that block (median of timed runs); `native` always qualifies. An explicit
backend that is not installed or fails the check refuses to start (`ModelLoadError`) with the figures.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import ModelLoadError

DIFFUSERS_BACKENDS = {"native": "native", "cudnn": "_native_cudnn", "flash3": "_flash_3", "sage": "sage"}
# `auto` tries these, in this order; the fastest that passes wins.
AUTO_CANDIDATES = ("sage", "flash3", "cudnn", "native")
CHECK_TEXT_TOKENS = 64
CHECK_IMAGE_TOKENS = 256
TIMED_RUNS = 5


@dataclass(frozen=True)
class BackendTrial:
    """The outcome of trying one backend: why it is unusable, or its error against SDPA and its speed."""

    backend: str
    unavailable: str | None = None  # why it cannot run here; None when it ran
    max_abs_diff: float | None = None
    bound: float | None = None
    ms: float | None = None

    @property
    def passed(self) -> bool:
        return (
            self.unavailable is None
            and self.max_abs_diff is not None
            and self.bound is not None
            and self.max_abs_diff <= self.bound
        )

    def describe(self) -> str:
        if self.unavailable is not None:
            return f"{self.backend}: unavailable ({self.unavailable})"
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.backend}: max |diff| {self.max_abs_diff:.3g} vs bound {self.bound:.3g} {verdict}, "
            f"{self.ms:.3f} ms"
        )


Probe = Callable[[str], BackendTrial]


def choose_backend(
    setting: str, probe: Probe, candidates: Iterable[str] = AUTO_CANDIDATES
) -> tuple[str, list[BackendTrial]]:
    """The backend to use for `setting` ("auto" or a name), and the trials that decided it.

    `probe(name)` tries one backend (`BlockProbe` in production; tests inject their own). Raises
    `ModelLoadError` when an explicit backend is unavailable or fails its check.
    """
    if setting != "auto":
        if setting == "native":
            return "native", []
        trial = probe(setting)
        if not trial.passed:
            raise ModelLoadError(
                f"KLEIN_EDIT_PIPELINE__ATTENTION={setting} cannot be used: {trial.describe()}; "
                "use native, or auto (picks the fastest backend that passes)"
            )
        return setting, [trial]
    trials = [probe(name) for name in candidates]
    passed = [trial for trial in trials if trial.passed]
    if not passed:
        return "native", trials
    fastest = min(passed, key=lambda trial: trial.ms if trial.ms is not None else float("inf"))
    return fastest.backend, trials


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` here, or None."""
    if backend == "native":
        return None
    if device.type != "cuda":
        return "needs CUDA"
    dispatch: Any = importlib.import_module("diffusers.models.attention_dispatch")
    try:
        dispatch._check_attention_backend_requirements(
            dispatch.AttentionBackendName(DIFFUSERS_BACKENDS[backend])
        )
    except RuntimeError as exc:
        return str(exc).split(". ")[0]
    return None


class BlockProbe:
    """Tries a backend on the first single-stream block of `transformer` against SDPA (see the module doc)."""

    def __init__(self, transformer: torch.nn.Module, *, tolerance: float) -> None:
        self._transformer = transformer
        self._tolerance = tolerance
        parameter = next(transformer.parameters())
        self._device = parameter.device
        self._dtype = parameter.dtype
        self._inputs = self._make_inputs()
        self._reference = self._run("native")

    def _make_inputs(self) -> dict[str, Any]:
        config: Any = self._transformer.config  # type: ignore[union-attr]
        dim = int(config.num_attention_heads) * int(config.attention_head_dim)
        tokens = CHECK_TEXT_TOKENS + CHECK_IMAGE_TOKENS
        generator = torch.Generator(device="cpu").manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(self._device, self._dtype)

        ids = torch.zeros(tokens, len(config.axes_dims_rope), dtype=torch.long)
        ids[:, -1] = torch.arange(tokens)
        pos_embed: Any = self._transformer.pos_embed  # type: ignore[union-attr]
        with torch.inference_mode():
            rotary = pos_embed(ids.to(self._device))
        return {
            "hidden_states": randn(1, tokens, dim),
            "encoder_hidden_states": None,
            "temb_mod": randn(1, 3 * dim) * 0.1,
            "image_rotary_emb": rotary,
        }

    def _block(self) -> torch.nn.Module:
        blocks: Any = self._transformer.single_transformer_blocks  # type: ignore[union-attr]
        block: torch.nn.Module = blocks[0]
        return block

    def _run(self, backend: str) -> torch.Tensor:
        dispatch: Any = importlib.import_module("diffusers.models.attention_dispatch")
        with torch.inference_mode(), dispatch.attention_backend(DIFFUSERS_BACKENDS[backend]):
            output = self._block()(**self._inputs)
        tensor: torch.Tensor = output[0] if isinstance(output, tuple) else output
        return tensor.float()

    def _time(self, backend: str) -> float:
        samples = []
        for _ in range(TIMED_RUNS):
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            start = time.perf_counter()
            self._run(backend)
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    def __call__(self, backend: str) -> BackendTrial:
        reason = unavailable_reason(backend, self._device)
        if reason is not None:
            return BackendTrial(backend, unavailable=reason)
        try:
            output = self._run(backend)
        except Exception as exc:
            return BackendTrial(backend, unavailable=f"{type(exc).__name__}: {exc}"[:300])
        bound = self._tolerance * max(1.0, float(self._reference.abs().max()))
        diff = float((output - self._reference).abs().max())
        return BackendTrial(backend, max_abs_diff=diff, bound=bound, ms=self._time(backend))


def select_attention(
    transformer: torch.nn.Module, setting: str, *, tolerance: float
) -> tuple[str, list[BackendTrial]]:
    """Choose the backend for `setting` on this transformer and install it; returns it and the trials."""
    if setting == "native":
        return "native", []
    chosen, trials = choose_backend(setting, BlockProbe(transformer, tolerance=tolerance))
    if chosen != "native":
        set_backend: Any = transformer.set_attention_backend  # type: ignore[operator]
        set_backend(DIFFUSERS_BACKENDS[chosen])
    return chosen, trials

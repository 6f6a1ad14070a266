"""Transformer passes: counted per edit, and the two operator options that skip some of them.

* Counting: a pass counts when the transformer's last block runs (a forward hook), so a pass whose
  blocks the step cache skipped, or an unconditional pass the guidance interval skipped, does not.
* Guidance interval (`PipelineSettings.guidance_interval`, Kynkäänniemi et al. 2024): the unconditional
  pass runs only on the steps whose position i / steps lies in [start, end); elsewhere the step uses the
  conditional prediction alone (guidance weight 1). Implemented by a wrapper around the transformer's
  forward that, for a skipped unconditional call, returns the same step's conditional output instead of
  computing: `neg + scale * (cond - neg)` is then exactly `cond`. Flux2KleinPipeline (diffusers 0.42.1)
  calls the transformer as cond, uncond, cond, uncond, ... when guidance is on, once per step otherwise.
* Step cache (`PipelineSettings.step_cache` = "dbcache"): cache-dit's DBCache, with one cache per CFG
  branch (`enable_separate_cfg`). cache-dit tells the branches apart by the parity of the transformer
  call, so it cannot be combined with a guidance interval, which removes calls: refused at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pipeline.config import PipelineSettings
from pipeline.errors import ModelLoadError

FULL_SCHEDULE = (0.0, 1.0)


def step_cache_refusal(settings: PipelineSettings) -> str | None:
    """Why these step-skipping settings cannot run together, or None."""
    if settings.step_cache != "off" and tuple(settings.guidance_interval) != FULL_SCHEDULE:
        return (
            "KLEIN_EDIT_PIPELINE__STEP_CACHE=dbcache cannot be combined with "
            "KLEIN_EDIT_PIPELINE__GUIDANCE_INTERVAL: cache-dit keeps the conditional and unconditional "
            "caches apart by the parity of transformer calls, and the guidance interval removes "
            "unconditional calls; use one of them"
        )
    return None


def enable_step_cache(pipe: Any, settings: PipelineSettings) -> None:
    """Install cache-dit's DBCache on `pipe` (separate caches for the CFG branches); raises ModelLoadError."""
    if settings.step_cache == "off":
        return
    try:
        import cache_dit
    except ImportError as exc:
        raise ModelLoadError(
            "KLEIN_EDIT_PIPELINE__STEP_CACHE=dbcache needs cache-dit, which is not installed: "
            "`pip install cache-dit` (tested with 1.5.3), or set it to off"
        ) from exc
    _quiet_cache_dit()
    config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=settings.step_cache_front_blocks,
        Bn_compute_blocks=settings.step_cache_back_blocks,
        residual_diff_threshold=settings.step_cache_threshold,
        max_warmup_steps=settings.step_cache_warmup_steps,
        max_continuous_cached_steps=settings.step_cache_max_continuous,
        enable_separate_cfg=True,
    )
    try:
        cache_dit.enable_cache(pipe, cache_config=config)
    except Exception as exc:
        raise ModelLoadError(f"cache-dit could not install DBCache: {type(exc).__name__}: {exc}") from exc
    _quiet_cache_dit()


def _quiet_cache_dit() -> None:
    """cache-dit logs every option at INFO, each module logger with its own level and handler: noise in
    a worker's JSON logs. Warnings stay."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("cache_dit", "CACHE_DIT")):
            logging.getLogger(name).setLevel(logging.WARNING)


class PassGate:
    """Counts the transformer passes of each edit and skips unconditional passes outside the interval."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        interval: tuple[float, float] = FULL_SCHEDULE,
        *,
        per_call: bool = False,
    ) -> None:
        """`interval`: the operator's guidance interval; `per_call`: an edit may give its own (speed tiers),
        so the gate wraps the transformer's forward even when the default is the full schedule."""
        self._interval = (float(interval[0]), float(interval[1]))
        blocks: Any = getattr(transformer, "single_transformer_blocks", None) or getattr(
            transformer, "transformer_blocks", None
        )
        last: torch.nn.Module = blocks[-1] if blocks else transformer
        last.register_forward_hook(self._count)
        self._passes = 0
        self._default = self._interval
        if self._interval != FULL_SCHEDULE or per_call:
            original = transformer.forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                return self._gate(original, args, kwargs)

            transformer.forward = forward  # type: ignore[method-assign]
        self._steps = 0
        self._guided = False
        self._calls = 0
        self._cond_output: Any = None
        self._active = False

    def _count(self, _module: Any, _args: Any, _output: Any) -> None:
        self._passes += 1

    def runs_unconditional(self, step: int, steps: int) -> bool:
        start, end = self._interval
        return start <= step / steps < end

    def _gate(self, original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not (self._active and self._guided):
            return original(*args, **kwargs)
        step, branch = divmod(self._calls, 2)
        self._calls += 1
        if branch == 1 and not self.runs_unconditional(step, self._steps):
            return self._cond_output  # the same step's conditional prediction: guidance weight 1
        output = original(*args, **kwargs)
        if branch == 0:
            self._cond_output = output
        return output

    @contextmanager
    def edit(
        self, *, steps: int, guided: bool, interval: tuple[float, float] | None = None
    ) -> Iterator[None]:
        """Around one pipeline call (the editor's lock makes calls sequential); `interval` replaces the
        default guidance interval for this call (a speed tier; needs `per_call`)."""
        self._steps, self._guided, self._calls, self._passes = max(1, steps), guided, 0, 0
        self._interval = interval if interval is not None else self._default
        self._active = True
        try:
            yield
        finally:
            self._active = False
            self._cond_output = None
            self._interval = self._default

    @property
    def passes(self) -> int:
        """Passes whose blocks ran in the current (or last) edit."""
        return self._passes

    def expected_passes(self, steps: int, guided: bool) -> int:
        """Passes without a step cache: every step's conditional pass plus the unconditional ones run."""
        if not guided:
            return steps
        return steps + sum(1 for step in range(steps) if self.runs_unconditional(step, steps))

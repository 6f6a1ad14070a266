"""A model-free `Editor` for the orchestration benchmark and fault drills.

It behaves like the real editor from the consumer's point of view: it holds the calling thread for a set
time, reports steps (so cancellation works between steps), and returns a deterministic image of the
requested size derived from the base image and the seed. No torch, no GPU.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from PIL import Image

from pipeline.adapters import AdapterWeights, parse_adapter
from pipeline.editor import EditJob, EditOutput
from pipeline.identity import DEFAULT_ATTENTION, ModelIdentity

MAX_STANDIN_ADAPTER_RANK = 1024


class StandInEditor:
    """Sleeps instead of denoising; `busy_seconds` lets a benchmark compute the edit thread's duty cycle."""

    def __init__(
        self,
        *,
        edit_ms: float,
        steps_callback: bool = True,
        model_name: str = "stand-in",
        fault: Callable[[EditJob], None] | None = None,
    ) -> None:
        """`fault`, if given, is called at the start of each edit and may raise any error to inject it."""
        if edit_ms < 0:
            raise ValueError("edit_ms must be >= 0")
        self._edit_seconds = edit_ms / 1e3
        self._steps_callback = steps_callback
        self._model_name = model_name
        self._fault = fault
        self._busy = 0.0
        self._edits = 0
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def identity(self) -> ModelIdentity:
        """No model files: the revision is a placeholder (`revision_source` "none")."""
        return ModelIdentity(
            model=self._model_name,
            revision="stand-in",
            revision_source="none",
            dtype="none",
            quantization="none",
            compiled=False,
            attention=DEFAULT_ATTENTION,
            scheduler=type(self).__name__,
        )

    @property
    def busy_seconds(self) -> float:
        with self._lock:
            return self._busy

    @property
    def edits(self) -> int:
        """Edits started (including failed and canceled ones)."""
        with self._lock:
            return self._edits

    def edit(self, job: EditJob) -> EditOutput:
        start = time.perf_counter()
        with self._lock:
            self._edits += 1
        try:
            if self._fault is not None:
                self._fault(job)
            self._hold(job)
            image = render(job)
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._busy += elapsed
        passes = job.num_inference_steps * (2 if self.uses_guidance(job.guidance_scale) else 1)
        return EditOutput(
            image=image, inference_ms=(time.perf_counter() - start) * 1e3, transformer_passes=passes
        )

    def _hold(self, job: EditJob) -> None:
        steps = max(1, job.num_inference_steps)
        if not self._steps_callback:
            time.sleep(self._edit_seconds)
            return
        # Sleep to absolute deadlines so per-slice wake-up jitter does not accumulate over many steps.
        start = time.perf_counter()
        for step in range(1, steps + 1):
            remaining = start + self._edit_seconds * step / steps - time.perf_counter()
            if remaining > 0:
                time.sleep(remaining)
            if job.on_step is not None:
                job.on_step(step, steps)

    def check_prompt(self, prompt: str) -> None:
        """No tokenizer here: the stand-in takes any prompt the request schema allows."""
        return None

    def parse_adapter(self, data: bytes, *, name: str) -> AdapterWeights:
        """Checks the file's format, layout and ranks; there is no transformer to check modules against,
        and the stand-in's output ignores adapters."""
        return parse_adapter(data, name=name, targets=None, max_rank=MAX_STANDIN_ADAPTER_RANK)

    def uses_guidance(self, guidance_scale: float) -> bool:
        """The Base model's rule (see `KleinEditor.uses_guidance`)."""
        return guidance_scale > 1

    def warm_up(self) -> None:
        return None

    def memory_stats(self) -> dict[str, float]:
        return {"allocated_bytes": 0.0, "peak_bytes": 0.0}

    @property
    def recompiles_after_ready(self) -> int:
        return 0


def render(job: EditJob) -> Image.Image:
    """The base image resized to the output size and tinted by a colour derived from the seed."""
    digest = hashlib.sha256(job.seed.to_bytes(8, "big", signed=False)).digest()
    tint = Image.new("RGB", (job.width, job.height), (digest[0], digest[1], digest[2]))
    if not job.images:
        return tint
    base = job.images[0].convert("RGB").resize((job.width, job.height), Image.Resampling.BILINEAR)
    return Image.blend(base, tint, 0.3)

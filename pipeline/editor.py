"""The edit seam (`Editor`, `EditJob`, `EditOutput`) and the real editor around `Flux2KleinPipeline`.

The consumer depends only on the `Editor` protocol; `KleinEditor` is the production implementation and
`StandInEditor` (pipeline/standin.py) a model-free one for benchmarks and fault drills. `edit()` is
blocking and meant to be called from one dedicated thread; a lock serialises accidental concurrent calls
because a diffusers pipeline keeps per-call state on itself.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from pipeline.config import PipelineSettings
from pipeline.errors import DeviceFailure, GpuOutOfMemory
from pipeline.images import check_edit_input

WARMUP_STEPS = 2
WARMUP_GUIDANCE = 4.0  # > 1 so warm-up runs both the conditional and the unconditional pass


@dataclass(frozen=True)
class EditJob:
    """One edit as the model sees it: decoded images, the compiled prompt and resolved parameters."""

    images: Sequence[Image.Image]  # base first, then references
    prompt: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    on_step: Callable[[int, int], None] | None = None  # (steps_done, total); may raise EditCanceled


@dataclass(frozen=True)
class EditOutput:
    image: Image.Image
    inference_ms: float


class Editor(Protocol):
    """What the consumer needs from an image editor."""

    @property
    def model_name(self) -> str: ...

    def edit(self, job: EditJob) -> EditOutput: ...

    def warm_up(self) -> None: ...

    def memory_stats(self) -> dict[str, float]: ...


_OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError)
_ACCELERATOR_ERROR: type[BaseException] | None = getattr(torch, "AcceleratorError", None)


class KleinEditor:
    """Runs edits on a diffusers `Flux2KleinPipeline` (FLUX.2 [klein] base)."""

    def __init__(self, pipe: Any, settings: PipelineSettings, model_name: str) -> None:
        self._pipe = pipe
        self._settings = settings
        self._model_name = model_name
        self._device: torch.device = torch.device(pipe._execution_device)
        self._lock = threading.Lock()
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._negative_embeds: torch.Tensor | None = None

    @classmethod
    def load(cls, settings: PipelineSettings) -> KleinEditor:
        """Load the model named in `settings`, apply its options; raises `ModelLoadError`."""
        from pipeline.loader import load_pipeline
        from pipeline.optimize import apply_options

        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        pipe, model_name = load_pipeline(settings)
        apply_options(pipe, settings)
        return cls(pipe, settings, model_name)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def device(self) -> torch.device:
        return self._device

    def edit(self, job: EditJob) -> EditOutput:
        """Run one edit; raises GpuOutOfMemory, DeviceFailure, EditCanceled or InvalidImage."""
        for index, image in enumerate(job.images):
            check_edit_input(image, "image" if index == 0 else f"references[{index - 1}]")
        with self._lock:
            return self._run(job)

    def _run(self, job: EditJob) -> EditOutput:
        out_of_memory: BaseException | None = None
        start = time.perf_counter()
        try:
            image = self._generate(job)
        except _OOM_ERRORS as exc:
            # The traceback pins the frames holding activations; drop it so the memory can be freed.
            out_of_memory = exc.with_traceback(None)
        except RuntimeError as exc:
            if _is_out_of_memory(exc):
                out_of_memory = exc.with_traceback(None)
            elif _is_device_failure(exc):
                raise DeviceFailure(f"CUDA device failure during the edit: {exc}") from exc
            else:
                raise
        if out_of_memory is not None:
            # Outside the except block: the exception's frames (and their tensors) are unreachable now.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise GpuOutOfMemory(
                f"GPU out of memory for a {job.width}x{job.height} edit with {len(job.images)} image(s): "
                f"{str(out_of_memory).splitlines()[0] if str(out_of_memory) else 'no detail'}"
            ) from out_of_memory
        return EditOutput(image=image, inference_ms=(time.perf_counter() - start) * 1e3)

    def _generate(self, job: EditJob) -> Image.Image:
        pipe = self._pipe
        generator = torch.Generator(device=self._device).manual_seed(job.seed)
        extra: dict[str, Any] = {}
        if self._uses_guidance(job.guidance_scale):
            extra["negative_prompt_embeds"] = self._negative_prompt_embeds()
        total = job.num_inference_steps
        on_step = job.on_step

        def step_end(
            _pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, total)
            return callback_kwargs

        result = pipe(
            image=list(job.images),
            prompt_embeds=self._prompt_embeds(job.prompt),
            height=job.height,
            width=job.width,
            num_inference_steps=total,
            guidance_scale=job.guidance_scale,
            generator=generator,
            max_sequence_length=self._settings.max_sequence_length,
            callback_on_step_end=step_end,
            output_type="pil",
            **extra,
        )
        image: Image.Image = result.images[0]
        return image

    def _uses_guidance(self, guidance_scale: float) -> bool:
        # Mirrors Flux2KleinPipeline.do_classifier_free_guidance (diffusers 0.42.1).
        return guidance_scale > 1 and not bool(self._pipe.config.is_distilled)

    def _encode(self, prompt: str) -> torch.Tensor:
        embeds, _text_ids = self._pipe.encode_prompt(
            prompt=prompt, device=self._device, max_sequence_length=self._settings.max_sequence_length
        )
        tensor: torch.Tensor = embeds
        return tensor

    def _negative_prompt_embeds(self) -> torch.Tensor:
        if self._negative_embeds is None:
            self._negative_embeds = self._encode("")
        return self._negative_embeds

    def _prompt_embeds(self, prompt: str) -> torch.Tensor:
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            self._prompt_cache.move_to_end(prompt)
            return cached.to(self._device)
        embeds = self._encode(prompt)
        capacity = self._settings.prompt_cache_size
        if capacity > 0:
            # Kept in host memory: one 9B embedding is 512 x 12288 bf16 = 12.6 MB, so a full cache on the
            # GPU would cost GBs, while copying one back per edit takes about a millisecond.
            self._prompt_cache[prompt] = embeds.to("cpu")
            while len(self._prompt_cache) > capacity:
                self._prompt_cache.popitem(last=False)
        return embeds

    def warm_up(self) -> None:
        """One short edit per configured output size, so compiled graphs and caches are hot before ready."""
        for width, height in self._settings.warmup_sizes:
            base = Image.new("RGB", (width, height), (128, 128, 128))
            self.edit(
                EditJob(
                    images=[base],
                    prompt="warm-up",
                    num_inference_steps=WARMUP_STEPS,
                    guidance_scale=WARMUP_GUIDANCE,
                    seed=0,
                    width=width,
                    height=height,
                )
            )

    def memory_stats(self) -> dict[str, float]:
        if self._device.type != "cuda":
            return {"allocated_bytes": 0.0, "peak_bytes": 0.0}
        return {
            "allocated_bytes": float(torch.cuda.memory_allocated(self._device)),
            "peak_bytes": float(torch.cuda.max_memory_allocated(self._device)),
        }

    def prompt_cache_len(self) -> int:
        return len(self._prompt_cache)


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _is_device_failure(exc: BaseException) -> bool:
    if _ACCELERATOR_ERROR is not None and isinstance(exc, _ACCELERATOR_ERROR):
        return True
    text = str(exc)
    return "CUDA error" in text or "device-side assert" in text

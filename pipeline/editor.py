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
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

import structlog
import torch
from PIL import Image

from pipeline.adapters import (
    ActiveAdapter,
    AdapterApplier,
    AdapterSlots,
    AdapterWeights,
    check_slot_compatible,
    linear_shapes,
    parse_adapter,
    slot_modules,
)
from pipeline.attention import select_attention
from pipeline.config import MAX_SEQUENCE_LENGTH, PipelineSettings, adapters_refusal
from pipeline.errors import DeviceFailure, GpuOutOfMemory, ModelLoadError, PromptTooLong
from pipeline.identity import ModelIdentity, describe_pipeline
from pipeline.images import conform_to_pipeline
from pipeline.loader import first_line, out_of_memory_message
from pipeline.optimize import CompileCounter
from pipeline.passes import PassGate, enable_step_cache, step_cache_refusal
from schemas.requests import MAX_STEPS, MIN_STEPS

log = structlog.get_logger(__name__)

WARMUP_STEPS = 2
WARMUP_GUIDANCE = 4.0  # > 1 so warm-up runs both the conditional and the unconditional pass


@dataclass(frozen=True)
class CheckpointRules:
    """What the loaded checkpoint is, and the step and guidance rules it sets.

    Read from model_index.json's `is_distilled`. The Base model (`black-forest-labs/FLUX.2-klein-base-9B`)
    is undistilled: 25-50 steps with classifier-free guidance. A distilled klein checkpoint is made for
    4 steps and has no classifier-free guidance: `Flux2KleinPipeline` ignores guidance_scale for it
    (`do_classifier_free_guidance`, diffusers 0.42.1). Figures from BFL's FLUX.2 [klein] model cards.
    `min_steps`..`max_steps` is what the checkpoint can run; the request schema may ask for more.
    """

    distilled: bool
    min_steps: int
    max_steps: int
    default_steps: int

    @property
    def guidance(self) -> bool:
        """Whether classifier-free guidance can run at all (it never does on a distilled checkpoint)."""
        return not self.distilled

    def describe(self) -> str:
        """One line for the start-up log: what this checkpoint is and its rules."""
        if self.distilled:
            return (
                "distilled FLUX.2 [klein] checkpoint (model_index.json is_distilled: true): made for "
                f"{self.default_steps} steps without classifier-free guidance, more steps only cost time; "
                "guidance_scale is ignored and every result says guidance_applied: false"
            )
        return (
            f"FLUX.2 [klein] base checkpoint (undistilled): {self.min_steps}-{self.max_steps} steps "
            f"(default {self.default_steps}), classifier-free guidance when guidance_scale > 1"
        )


BASE_RULES = CheckpointRules(distilled=False, min_steps=MIN_STEPS, max_steps=MAX_STEPS, default_steps=50)
# More steps than 4 cost time and do not help a step-distilled model; fewer are allowed.
DISTILLED_RULES = CheckpointRules(distilled=True, min_steps=1, max_steps=MAX_STEPS, default_steps=4)


def checkpoint_rules(pipe: Any) -> CheckpointRules:
    """The rules of a loaded `Flux2KleinPipeline`, from its `is_distilled` config."""
    return DISTILLED_RULES if bool(pipe.config.is_distilled) else BASE_RULES


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
    adapters: Sequence[ActiveAdapter] = ()  # LoRA adapters for this edit only, parsed by `parse_adapter`
    # What the unconditional pass is steered away from (classifier-free guidance only); "" is the default
    # empty negative prompt, encoded once.
    negative_prompt: str = ""
    # A speed tier's guidance interval for this edit alone (None: the operator's default).
    guidance_interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class EditOutput:
    image: Image.Image
    inference_ms: float
    adapter_load_ms: float = 0.0  # loading adapters into the transformer (0 when all were resident)
    # Transformer passes whose blocks ran (a pass the step cache or the guidance interval skipped is not
    # counted); None when the editor cannot tell.
    transformer_passes: int | None = None


class Editor(Protocol):
    """What the consumer needs from an image editor."""

    @property
    def model_name(self) -> str: ...

    @property
    def identity(self) -> ModelIdentity:
        """The model, its revision and how it runs (for provenance); constant for the process."""
        ...

    def edit(self, job: EditJob) -> EditOutput: ...

    def check_prompt(self, prompt: str) -> None:
        """Raise `PromptTooLong` for a prompt over the model's token limit; called on an I/O thread."""
        ...

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Whether classifier-free guidance runs at this scale (the unconditional pass is skipped if not)."""
        ...

    def parse_adapter(self, data: bytes, *, name: str) -> AdapterWeights:
        """Parse and check a LoRA adapter file against this model; CPU only, called on an I/O thread.

        Raises `InvalidAdapter` naming `name` and the module that does not fit.
        """
        ...

    def warm_up(self) -> None: ...

    def memory_stats(self) -> dict[str, float]: ...

    @property
    def recompiles_after_ready(self) -> int:
        """torch.compile recompilations since warm-up finished; serving should never cause one."""
        ...


_OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError)
_ACCELERATOR_ERROR: type[BaseException] | None = getattr(torch, "AcceleratorError", None)


class KleinEditor:
    """Runs edits on a diffusers `Flux2KleinPipeline` (FLUX.2 [klein] base)."""

    def __init__(
        self,
        pipe: Any,
        settings: PipelineSettings,
        model_name: str,
        *,
        compile_counter: CompileCounter | None = None,
        attention_backend: str = "native",
        adapter_slots: AdapterSlots | None = None,
    ) -> None:
        self._pipe = pipe
        self._attention_backend = attention_backend
        self._compile_counter = compile_counter
        self._compilations_at_ready: int | None = None
        self._settings = settings
        self._model_name = model_name
        self._device: torch.device = torch.device(pipe._execution_device)
        self._lock = threading.Lock()
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._negative_embeds: torch.Tensor | None = None
        # Read-only after this point, so `parse_adapter` may use it from any thread.
        self._adapter_slots = adapter_slots
        self._adapters: AdapterApplier | AdapterSlots
        if adapter_slots is not None:
            self._adapter_targets = adapter_slots.modules
            self._adapters = adapter_slots
        else:
            self._adapter_targets = linear_shapes(pipe.transformer)
            self._adapters = AdapterApplier(pipe, resident=settings.resident_adapters)
        self._gate = PassGate(
            pipe.transformer, settings.guidance_interval, per_call=bool(settings.acceleration_tiers)
        )
        self._rules = checkpoint_rules(pipe)

    @classmethod
    def load(cls, settings: PipelineSettings) -> KleinEditor:
        """Load the model named in `settings`, apply its options; raises `ModelLoadError`."""
        from pipeline.loader import load_pipeline
        from pipeline.optimize import compile_if_enabled

        refusal = adapters_refusal(settings) or step_cache_refusal(settings)
        if refusal is not None:
            raise ModelLoadError(refusal)
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        pipe, model_name = load_pipeline(settings)
        rules = checkpoint_rules(pipe)
        # A distilled checkpoint in a worker whose requests are written for the Base model is worth a warning.
        notice = log.warning if rules.distilled else log.info
        notice("model.checkpoint", distilled=rules.distilled, rules=rules.describe())
        # Before compile: the numerical check runs one eager block per candidate backend.
        attention, trials = select_attention(
            pipe.transformer, settings.attention, tolerance=settings.attention_tolerance
        )
        log.info(
            "attention.selected",
            setting=settings.attention,
            backend=attention,
            trials=[trial.describe() for trial in trials],
        )
        enable_step_cache(pipe, settings)
        slots = None
        if settings.compile and settings.max_adapters > 0:
            # Before compile: the slots are part of what gets traced (see AdapterSlots).
            modules = slot_modules(pipe.transformer)
            slots = AdapterSlots(
                pipe, slots=settings.max_adapters, rank=settings.max_adapter_rank, modules=modules
            )
        counter = compile_if_enabled(pipe, settings)
        return cls(
            pipe,
            settings,
            model_name,
            compile_counter=counter,
            attention_backend=attention,
            adapter_slots=slots,
        )

    @property
    def model_name(self) -> str:
        return self._model_name

    @cached_property
    def identity(self) -> ModelIdentity:
        return describe_pipeline(self._pipe, self._settings, self._model_name)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def checkpoint(self) -> CheckpointRules:
        """What the checkpoint is (base or distilled) and the step and guidance rules it sets."""
        return self._rules

    @property
    def distilled(self) -> bool:
        """True for a step-distilled checkpoint: no classifier-free guidance, made for 4 steps."""
        return self._rules.distilled

    @property
    def attention_backend(self) -> str:
        """The attention kernel in use, by setting name: native, cudnn, flash3 or sage (`pipeline.attention`).

        The result's provenance and `klein_edit_build_info` report it by diffusers' name (`_native_cudnn`,
        `_flash_3`, `sage`), read from the transformer's processors (`pipeline.identity`)."""
        return self._attention_backend

    @property
    def compilations(self) -> int:
        """Graphs `torch.compile` built for the transformer so far (0 when compile is off)."""
        return self._compile_counter.count if self._compile_counter is not None else 0

    @property
    def recompiles_after_ready(self) -> int:
        """Compilations since `warm_up` finished (the worker reports ready then); the goal is 0."""
        if self._compilations_at_ready is None:
            return 0
        return self.compilations - self._compilations_at_ready

    def edit(self, job: EditJob) -> EditOutput:
        """Run one edit; raises GpuOutOfMemory, DeviceFailure, EditCanceled or InvalidImage.

        The worker's prepare stage has already resized every input to its conditioning size
        (`pipeline.images.plan_geometry`), so here `conform_to_pipeline` only checks; the pipeline then
        neither resamples nor crops.
        """
        images = [
            conform_to_pipeline(image, "image" if index == 0 else f"references[{index - 1}]")
            for index, image in enumerate(job.images)
        ]
        if any(a is not b for a, b in zip(images, job.images, strict=True)):
            job = replace(job, images=images)
        with self._lock, torch.inference_mode():
            return self._run(job)

    def check_prompt(self, prompt: str) -> None:
        """Raise `PromptTooLong` when the chat-templated prompt exceeds the 512-token limit.

        The pipeline would silently truncate it (`truncation=True`), dropping the end of the instruction.
        Tokenizing is CPU-only and the fast tokenizer is thread-safe, so this runs in the prepare stage.
        """
        tokens = count_prompt_tokens(self._pipe.tokenizer, prompt)
        if tokens > MAX_SEQUENCE_LENGTH:
            raise PromptTooLong(
                f"prompt: {tokens} tokens with the chat template, over the text encoder's limit of "
                f"{MAX_SEQUENCE_LENGTH}; shorten the prompt or the recolor list"
            )

    def parse_adapter(self, data: bytes, *, name: str) -> AdapterWeights:
        weights = parse_adapter(
            data, name=name, targets=self._adapter_targets, max_rank=self._settings.max_adapter_rank
        )
        if self._adapter_slots is not None:
            check_slot_compatible(weights, name=name)
        return weights

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters loaded in the transformer now, least recently used first."""
        return self._adapters.loaded

    def uses_guidance(self, guidance_scale: float) -> bool:
        # Mirrors Flux2KleinPipeline.do_classifier_free_guidance (diffusers 0.42.1): guidance_scale <= 1
        # turns CFG off, and a distilled checkpoint never uses it.
        return guidance_scale > 1 and self._rules.guidance

    def guidance_note(self, guidance_scale: float) -> str | None:
        """Why classifier-free guidance does not run at `guidance_scale` (None when it does)."""
        if self.uses_guidance(guidance_scale):
            return None
        if not self._rules.guidance:
            return (
                "this checkpoint is distilled: it has no classifier-free guidance, guidance_scale is ignored"
            )
        return f"guidance_scale {guidance_scale:g} <= 1 turns classifier-free guidance off"

    def _run(self, job: EditJob) -> EditOutput:
        out_of_memory: BaseException | None = None
        start = time.perf_counter()
        try:
            # Every edit sets the whole LoRA state (its adapters, or none), so nothing leaks between edits.
            adapter_load_ms = self._adapters.apply(job.adapters)
            start = time.perf_counter()
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
                self._probe_device(exc)
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
        return EditOutput(
            image=image,
            inference_ms=(time.perf_counter() - start) * 1e3,
            adapter_load_ms=adapter_load_ms,
            transformer_passes=self._gate.passes,
        )

    def _probe_device(self, cause: BaseException) -> None:
        """After an unexpected error, check the device still works; a broken context is fatal.

        Errors such as cuDNN `EXECUTION_FAILED` or a Triton illegal address do not always say "CUDA
        error", but they leave the context unusable: a synchronize plus a tiny op tells.
        """
        if self._device.type != "cuda":
            return
        try:
            torch.cuda.synchronize(self._device)
            probe = torch.ones(8, device=self._device) * 2
            torch.cuda.synchronize(self._device)
            if float(probe.sum().item()) != 16.0:
                raise RuntimeError("device probe computed a wrong result")
        except Exception as exc:
            raise DeviceFailure(
                f"the device failed a probe after an unexpected error ({type(cause).__name__}: {cause}); "
                f"probe: {type(exc).__name__}: {exc}"
            ) from exc

    def _generate(self, job: EditJob) -> Image.Image:
        # A CPU generator: the same seed gives the same noise on any GPU model (CUDA's random kernels depend
        # on the SM count) and on the CPU; the pipeline moves the noise to the device.
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        self._set_vae_tiling(job.width * job.height)
        extra: dict[str, Any] = {}
        if self.uses_guidance(job.guidance_scale):
            extra["negative_prompt_embeds"] = (
                self._prompt_embeds(job.negative_prompt)
                if job.negative_prompt
                else self._negative_prompt_embeds()
            )
        total = job.num_inference_steps
        on_step = job.on_step

        def step_end(
            _pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, total)
            return callback_kwargs

        with self._gate.edit(
            steps=total, guided=self.uses_guidance(job.guidance_scale), interval=job.guidance_interval
        ):
            result = self._call_pipeline(job, generator, step_end, extra)
        image: Image.Image = result.images[0]
        return image

    def _call_pipeline(self, job: EditJob, generator: torch.Generator, step_end: Any, extra: Any) -> Any:
        # Capped at 1 where guidance does not run: the same edit, without diffusers' per-call warning that
        # a distilled checkpoint ignores the scale.
        guided = self.uses_guidance(job.guidance_scale)
        guidance_scale = job.guidance_scale if guided else min(job.guidance_scale, 1.0)
        return self._pipe(
            image=list(job.images),
            prompt_embeds=self._prompt_embeds(job.prompt),
            height=job.height,
            width=job.width,
            num_inference_steps=job.num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            callback_on_step_end=step_end,
            output_type="pil",
            **extra,
        )

    def _set_vae_tiling(self, pixels: int) -> None:
        """Tile the VAE decode above `vae_tiling_megapixels`: large outputs then fit in memory."""
        vae = self._pipe.vae
        tile = pixels > self._settings.vae_tiling_megapixels * 1e6
        if tile != bool(getattr(vae, "use_tiling", False)):
            if tile:
                vae.enable_tiling()
            else:
                vae.disable_tiling()

    def _encode(self, prompt: str) -> torch.Tensor:
        # Always under inference mode (also when called outside `edit`): `encode_prompt` is not wrapped in
        # `no_grad` by diffusers, and a cached embedding must never hold the text encoder's graph.
        with torch.inference_mode():
            embeds, _text_ids = self._pipe.encode_prompt(
                prompt=prompt, device=self._device, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
        tensor: torch.Tensor = embeds.detach()
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
        """Short edits before ready: each configured output size, then the first one with a reference.

        Compiled blocks see their token dimension as dynamic (`pipeline.optimize.mark_sequence_dynamic`),
        so the first edit compiles one graph per block class and the rest only heat caches (cuDNN,
        autotuning, the negative prompt). `recompiles_after_ready` counts from the end of this call.

        A warm-up edit that fails means the model cannot edit (components that do not fit together, a
        size that does not fit in memory, a failed GPU): raises `ModelLoadError`, one line naming the
        edit and the cause, so the worker refuses to start as for any other load failure.
        """
        sizes = list(self._settings.warmup_sizes)
        plans = [(width, height, 0) for width, height in sizes]
        if sizes and self._settings.max_references > 0:
            plans.append((sizes[0][0], sizes[0][1], 1))
        for width, height, references in plans:
            images = [Image.new("RGB", (width, height), (128, 128, 128)) for _ in range(1 + references)]
            job = EditJob(
                images=images,
                prompt="warm-up",
                num_inference_steps=WARMUP_STEPS,
                guidance_scale=WARMUP_GUIDANCE,
                seed=0,
                width=width,
                height=height,
            )
            try:
                self.edit(job)
            except Exception as exc:
                raise ModelLoadError(self._warm_up_failure(job, exc)) from exc
        self._compilations_at_ready = self.compilations

    def _warm_up_failure(self, job: EditJob, exc: Exception) -> str:
        references = len(job.images) - 1
        plural = "" if references == 1 else "s"
        edit = f"the warm-up edit ({job.width}x{job.height}, {references} reference{plural})"
        if isinstance(exc, GpuOutOfMemory):
            cause = first_line(exc.__cause__ or exc)
            return f"{edit} ran out of GPU memory: {out_of_memory_message(self._settings, cause)}"
        if isinstance(exc, DeviceFailure):
            return f"{edit} failed on the GPU ({first_line(exc)}); restart the worker on a healthy GPU"
        where = getattr(self._pipe, "name_or_path", None) or self._model_name
        return (
            f"{edit} failed ({type(exc).__name__}: {first_line(exc)}): the model cannot edit; check the "
            f"model directory {where} (its components must come from one release) or run "
            "`klein-edit fetch-model` again"
        )

    def memory_stats(self) -> dict[str, float]:
        if self._device.type != "cuda":
            return {"allocated_bytes": 0.0, "peak_bytes": 0.0, "reserved_bytes": 0.0}
        return {
            "allocated_bytes": float(torch.cuda.memory_allocated(self._device)),
            "peak_bytes": float(torch.cuda.max_memory_allocated(self._device)),
            "reserved_bytes": float(torch.cuda.memory_reserved(self._device)),
        }

    def prompt_cache_len(self) -> int:
        return len(self._prompt_cache)

    def cached_embeddings(self) -> list[torch.Tensor]:
        """Every embedding this editor keeps between edits (the prompt cache and the negative prompt)."""
        cached = list(self._prompt_cache.values())
        if self._negative_embeds is not None:
            cached.append(self._negative_embeds)
        return cached


def count_prompt_tokens(tokenizer: Any, prompt: str) -> int:
    """Tokens of `prompt` as Flux2KleinPipeline feeds it: one user turn in the chat template, no thinking."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    return len(tokenizer(text)["input_ids"])


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _is_device_failure(exc: BaseException) -> bool:
    if _ACCELERATOR_ERROR is not None and isinstance(exc, _ACCELERATOR_ERROR):
        return True
    text = str(exc)
    return "CUDA error" in text or "device-side assert" in text

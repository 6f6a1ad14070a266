"""KleinEditor on the tiny random-weight pipeline, plus error mapping with a fake pipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from pipeline.config import PipelineSettings
from pipeline.editor import EditJob, Editor, KleinEditor
from pipeline.errors import DeviceFailure, EditCanceled, GpuOutOfMemory, InvalidImage
from pipeline.images import encode_image
from schemas.errors import ErrorCode
from schemas.requests import OutputFormat

ImageFactory = Callable[..., Image.Image]
SETTINGS = PipelineSettings(model="tiny-random", device="cpu", warmup_sizes=[(64, 64)])


class CountingPipe:
    """Delegates to a real pipeline and counts text-encoder calls by prompt."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.encoded: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        return self._pipe(**kwargs)

    def encode_prompt(self, prompt: str, **kwargs: Any) -> Any:
        self.encoded.append(prompt)
        return self._pipe.encode_prompt(prompt=prompt, **kwargs)


@contextmanager
def count_transformer_passes(pipe: Any) -> Iterator[list[int]]:
    calls = [0]

    def count(_module: Any, _args: Any) -> None:
        calls[0] += 1

    handle = pipe.transformer.register_forward_pre_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


def job(images: list[Image.Image], **overrides: Any) -> EditJob:
    fields: dict[str, Any] = {
        "images": images,
        "prompt": "make the sky purple",
        "num_inference_steps": 2,
        "guidance_scale": 4.0,
        "seed": 7,
        "width": 64,
        "height": 64,
    }
    fields.update(overrides)
    return EditJob(**fields)


@pytest.fixture
def counting(tiny_pipe: Any) -> CountingPipe:
    return CountingPipe(tiny_pipe)


@pytest.fixture
def editor(counting: CountingPipe) -> KleinEditor:
    return KleinEditor(counting, SETTINGS, "tiny-random")


def test_multi_reference_edit(editor: KleinEditor, tiny_pipe: Any, make_image: ImageFactory) -> None:
    images = [make_image(96, 80, 0), make_image(64, 128, 1), make_image(160, 96, 2)]
    with count_transformer_passes(tiny_pipe) as passes:
        output = editor.edit(job(images, width=80, height=64))
    assert output.image.size == (80, 64)
    assert output.image.mode == "RGB"
    assert output.inference_ms > 0
    assert passes[0] == 2 * 2  # cond + uncond per step


def test_same_seed_same_bytes_other_seed_differs(editor: KleinEditor, make_image: ImageFactory) -> None:
    images = [make_image(64, 64, 0), make_image(80, 64, 1)]
    first = encode_image(editor.edit(job(images, seed=11)).image, OutputFormat.PNG)
    second = encode_image(editor.edit(job(images, seed=11)).image, OutputFormat.PNG)
    other = encode_image(editor.edit(job(images, seed=12)).image, OutputFormat.PNG)
    assert first == second
    assert first != other


def test_global_rng_does_not_matter(editor: KleinEditor, make_image: ImageFactory) -> None:
    images = [make_image(64, 64, 0)]
    torch.manual_seed(1)
    first = editor.edit(job(images)).image.tobytes()
    torch.manual_seed(2)
    assert editor.edit(job(images)).image.tobytes() == first


def test_negative_embedding_is_computed_once(
    editor: KleinEditor, counting: CountingPipe, make_image: ImageFactory
) -> None:
    images = [make_image(64, 64)]
    for prompt in ("one", "two", "three"):
        editor.edit(job(images, prompt=prompt))
    assert counting.encoded.count("") == 1
    assert sorted(p for p in counting.encoded if p) == ["one", "three", "two"]


def test_no_negative_embedding_without_guidance(
    editor: KleinEditor, counting: CountingPipe, tiny_pipe: Any, make_image: ImageFactory
) -> None:
    with count_transformer_passes(tiny_pipe) as passes:
        editor.edit(job([make_image(64, 64)], guidance_scale=1.0))
    assert "" not in counting.encoded
    assert passes[0] == 2  # one pass per step


def test_prompt_cache_hit(editor: KleinEditor, counting: CountingPipe, make_image: ImageFactory) -> None:
    images = [make_image(64, 64)]
    first = editor.edit(job(images, prompt="same")).image.tobytes()
    second = editor.edit(job(images, prompt="same")).image.tobytes()
    assert counting.encoded.count("same") == 1
    assert first == second  # a cached embedding gives exactly what a fresh one gives


def test_prompt_cache_evicts_least_recently_used(counting: CountingPipe, make_image: ImageFactory) -> None:
    editor = KleinEditor(counting, SETTINGS.model_copy(update={"prompt_cache_size": 2}), "tiny-random")
    images = [make_image(64, 64)]
    for prompt in ("a", "b", "a", "c", "a", "b"):
        editor.edit(job(images, prompt=prompt, guidance_scale=1.0, num_inference_steps=1))
    # "b" was evicted by "c" (the least recently used then), "a" stayed.
    assert counting.encoded == ["a", "b", "c", "b"]
    assert editor.prompt_cache_len() == 2


def test_prompt_cache_disabled(counting: CountingPipe, make_image: ImageFactory) -> None:
    editor = KleinEditor(counting, SETTINGS.model_copy(update={"prompt_cache_size": 0}), "tiny-random")
    for _ in range(2):
        editor.edit(job([make_image(64, 64)], prompt="p", guidance_scale=1.0, num_inference_steps=1))
    assert counting.encoded == ["p", "p"]
    assert editor.prompt_cache_len() == 0


def test_on_step_reports_progress(editor: KleinEditor, make_image: ImageFactory) -> None:
    seen: list[tuple[int, int]] = []
    editor.edit(job([make_image(64, 64)], num_inference_steps=3, on_step=lambda i, n: seen.append((i, n))))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_cancel_from_on_step_stops_between_steps(
    editor: KleinEditor, tiny_pipe: Any, make_image: ImageFactory
) -> None:
    seen: list[int] = []

    def on_step(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            raise EditCanceled("canceled by the producer")

    with count_transformer_passes(tiny_pipe) as passes, pytest.raises(EditCanceled) as info:
        editor.edit(job([make_image(64, 64)], num_inference_steps=6, on_step=on_step))
    assert info.value.code is ErrorCode.CANCELED
    assert seen == [1, 2]
    assert passes[0] == 2 * 2


def test_editor_still_works_after_cancel(editor: KleinEditor, make_image: ImageFactory) -> None:
    def cancel(_done: int, _total: int) -> None:
        raise EditCanceled("stop")

    with pytest.raises(EditCanceled):
        editor.edit(job([make_image(64, 64)], on_step=cancel))
    assert editor.edit(job([make_image(64, 64)])).image.size == (64, 64)


def test_too_small_reference_is_invalid_before_running(editor: KleinEditor, make_image: ImageFactory) -> None:
    with pytest.raises(InvalidImage, match=r"references\[0\]: 32x32 is too small"):
        editor.edit(job([make_image(64, 64), make_image(32, 32)]))


def test_warm_up_runs_each_size(editor: KleinEditor, tiny_pipe: Any) -> None:
    settings = SETTINGS.model_copy(update={"warmup_sizes": [(64, 64), (80, 64)]})
    warm = KleinEditor(tiny_pipe, settings, "tiny-random")
    with count_transformer_passes(tiny_pipe) as passes:
        warm.warm_up()
    # (each size, then the first size with one reference) x steps x (cond + uncond)
    assert passes[0] == 3 * 2 * 2


def test_memory_stats_are_zero_on_cpu(editor: KleinEditor) -> None:
    assert editor.memory_stats() == {"allocated_bytes": 0.0, "peak_bytes": 0.0, "reserved_bytes": 0.0}
    assert editor.model_name == "tiny-random"


def test_load_tiny_with_text_encoder_offload(make_image: ImageFactory) -> None:
    settings = SETTINGS.model_copy(update={"text_encoder_placement": "cpu_offload"})
    loaded: Editor = KleinEditor.load(settings)
    assert loaded.model_name == "tiny-random"
    loaded.warm_up()
    assert loaded.edit(job([make_image(64, 64)])).image.size == (64, 64)


# --- error mapping, with a fake pipeline that fails on demand ------------------------------------------


class FailingPipe:
    """Just enough of Flux2KleinPipeline for KleinEditor, raising `error` when called."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self._execution_device = torch.device("cpu")
        self.config = SimpleNamespace(is_distilled=False)
        self.vae = SimpleNamespace(use_tiling=False, enable_tiling=lambda: None, disable_tiling=lambda: None)
        self.transformer = torch.nn.Identity()  # no Linear layers: no adapter fits

    def encode_prompt(self, prompt: str, **_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 4, 6), torch.zeros(1, 4, 4)

    def __call__(self, **_kwargs: Any) -> Any:
        raise self.error


def run_failing(error: BaseException) -> None:
    editor = KleinEditor(FailingPipe(error), SETTINGS, "fake")
    editor.edit(job([Image.new("RGB", (64, 64))]))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
)
def test_out_of_memory_is_retryable(error: BaseException) -> None:
    with pytest.raises(GpuOutOfMemory, match="64x64 edit with 1 image") as info:
        run_failing(error)
    assert info.value.code is ErrorCode.GPU_OUT_OF_MEMORY
    assert info.value.retryable
    assert info.value.__cause__ is error
    assert error.__traceback__ is None  # frames released, so their tensors can be freed


def test_sticky_cuda_error_is_fatal() -> None:
    with pytest.raises(DeviceFailure, match="illegal memory access") as info:
        run_failing(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert info.value.fatal
    assert info.value.retryable
    assert info.value.code is ErrorCode.INTERNAL


def test_accelerator_error_is_fatal() -> None:
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is None:
        pytest.skip("this torch has no AcceleratorError")
    with pytest.raises(DeviceFailure):
        run_failing(accelerator_error("device lost"))


@pytest.mark.parametrize("error", [ValueError("bad shape"), RuntimeError("mat1 and mat2 shapes")])
def test_unexpected_errors_propagate_unchanged(error: BaseException) -> None:
    with pytest.raises(type(error)) as info:
        run_failing(error)
    assert info.value is error


@pytest.mark.gpu
def test_cuda_edit_reports_memory(make_image: ImageFactory) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    editor = KleinEditor.load(PipelineSettings(model="tiny-random", device="cuda", warmup_sizes=[(64, 64)]))
    first = editor.edit(job([make_image(64, 64)])).image.tobytes()
    assert editor.edit(job([make_image(64, 64)])).image.tobytes() == first
    stats = editor.memory_stats()
    assert stats["peak_bytes"] >= stats["allocated_bytes"] > 0

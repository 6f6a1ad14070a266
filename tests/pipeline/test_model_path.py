"""The tiny model goes through the loading path a GPU node runs, and inference keeps no autograd state.

`KLEIN_EDIT_PIPELINE__MODEL=<directory>` (here: the tiny model's directory, written by save_pretrained)
is loaded by `KleinEditor.load`; after 20 distinct prompts nothing but the prompt cache has grown.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.errors import PromptTooLong
from pipeline.loader import COMPONENTS, out_of_memory_message

PROMPTS = [f"make the sky colour number {i} and add {i} birds" for i in range(20)]


@pytest.fixture(scope="module")
def editor(saved_tiny_dir: Path) -> KleinEditor:
    return KleinEditor.load(
        PipelineSettings(model=str(saved_tiny_dir), device="cpu", warmup=False, prompt_cache_size=64)
    )


def job(prompt: str, **overrides: Any) -> EditJob:
    fields: dict[str, Any] = {
        "images": [Image.new("RGB", (64, 64), (200, 60, 40))],
        "prompt": prompt,
        "num_inference_steps": 1,
        "guidance_scale": 4.0,
        "seed": 1,
        "width": 64,
        "height": 64,
    }
    fields.update(overrides)
    return EditJob(**fields)


def live_tensors(pipe: Any) -> dict[int, torch.Tensor]:
    """Every tensor alive, except the scheduler's per-call schedule (replaced, never accumulated)."""
    gc.collect()
    schedule = {id(value) for value in vars(pipe.scheduler).values() if isinstance(value, torch.Tensor)}
    return {
        id(obj): obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor) and id(obj) not in schedule
    }


def test_directory_model_is_frozen(editor: KleinEditor) -> None:
    pipe = editor._pipe
    for name in COMPONENTS:
        module = getattr(pipe, name)
        assert not module.training, name
        assert not any(p.requires_grad for p in module.parameters()), f"{name} has parameters requiring grad"


def test_tiny_random_resolves_to_the_same_directory_loader(saved_tiny_dir: Path) -> None:
    from pipeline.loader import locate_model

    assert locate_model(PipelineSettings(model=TINY_RANDOM)) == saved_tiny_dir
    assert (saved_tiny_dir / "model_index.json").is_file()
    assert (saved_tiny_dir / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


def test_distinct_prompts_keep_no_graph_and_nothing_but_the_cache_grows(editor: KleinEditor) -> None:
    editor.edit(job("warm the negative prompt and the first buffers"))
    before = live_tensors(editor._pipe)
    cache_before = {id(t) for t in editor.cached_embeddings()}
    for prompt in PROMPTS:
        editor.edit(job(prompt))
    cached = editor.cached_embeddings()
    assert all(t.grad_fn is None and not t.requires_grad for t in cached)
    new_cached = [t for t in cached if id(t) not in cache_before]
    assert len(new_cached) == len(PROMPTS)
    grown = {key: t for key, t in live_tensors(editor._pipe).items() if key not in before}
    grown_bytes = sum(t.numel() * t.element_size() for t in grown.values())
    cache_bytes = sum(t.numel() * t.element_size() for t in new_cached)
    assert grown_bytes == cache_bytes, sorted((tuple(t.shape), t.dtype) for t in grown.values())


def test_encoding_outside_an_edit_keeps_no_graph(editor: KleinEditor) -> None:
    embeds = editor._prompt_embeds("encoded directly, not through edit()")
    assert embeds.grad_fn is None
    assert not embeds.requires_grad


def test_a_prompt_over_the_token_limit_is_refused_with_the_count(editor: KleinEditor) -> None:
    editor.check_prompt("a short prompt")
    with pytest.raises(PromptTooLong, match=r"prompt: \d+ tokens .* limit of 512") as info:
        editor.check_prompt(" ".join(f"x{i}q" for i in range(300)))
    assert info.value.code.value == "INVALID_EVENT"


def test_guidance_at_or_below_one_is_off(editor: KleinEditor) -> None:
    assert editor.uses_guidance(4.0)
    assert not editor.uses_guidance(1.0)
    assert not editor.uses_guidance(0.0)


def test_same_seed_same_pixels_from_a_cpu_generator(editor: KleinEditor) -> None:
    first = editor.edit(job("determinism")).image.tobytes()
    assert editor.edit(job("determinism")).image.tobytes() == first
    assert editor.edit(job("determinism", seed=2)).image.tobytes() != first


def test_vae_tiling_follows_the_output_area(saved_tiny_dir: Path) -> None:
    tiled = KleinEditor.load(
        PipelineSettings(model=str(saved_tiny_dir), device="cpu", warmup=False, vae_tiling_megapixels=0.005)
    )
    tiled.edit(job("small", width=64, height=64))  # 4096 px: under 0.005 MP
    assert not tiled._pipe.vae.use_tiling
    tiled.edit(job("large", width=96, height=64))  # 6144 px: over
    assert tiled._pipe.vae.use_tiling


def test_out_of_memory_message_names_only_options_that_are_off() -> None:
    default = out_of_memory_message(PipelineSettings(), "CUDA out of memory")
    assert "QUANTIZE_FLOAT8=true" in default
    assert "TEXT_ENCODER_PLACEMENT=float8" in default
    some = out_of_memory_message(
        PipelineSettings(quantize_float8=True, text_encoder_placement="float8"), "CUDA out of memory"
    )
    assert "QUANTIZE_FLOAT8" not in some
    assert "cpu_offload" in some
    every = out_of_memory_message(
        PipelineSettings(quantize_float8=True, text_encoder_placement="cpu_offload"), "CUDA out of memory"
    )
    assert "already on" in every

"""LoRA adapters on the tiny model: file checks, and applying them through `KleinEditor` (no leakage)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from PIL import Image
from safetensors.torch import save

from pipeline.adapters import ActiveAdapter, AdapterSlots, AdapterWeights, parse_adapter, slot_modules
from pipeline.config import PipelineSettings, adapters_refusal
from pipeline.editor import EditJob, KleinEditor
from pipeline.errors import InvalidAdapter, ModelLoadError
from pipeline.loader import load_pipeline
from schemas.errors import ErrorCode
from tests.adapters import (
    adapter_file,
    adapter_state_dict,
    pickle_file,
    torch_save_file,
    wrong_shape_file,
)
from tests.pipeline.conftest import synthetic_image

SETTINGS = PipelineSettings(model="tiny-random", device="cpu", warmup=False, resident_adapters=3)


@pytest.fixture(scope="module")
def editor() -> KleinEditor:
    """An editor of this module's own: these tests load adapters into its transformer."""
    return KleinEditor.load(SETTINGS)


def job(adapters: Sequence[ActiveAdapter] = (), seed: int = 5) -> EditJob:
    image: Image.Image = synthetic_image(80, 64, seed=1)
    return EditJob(
        images=[image],
        prompt="make it blue",
        num_inference_steps=3,
        guidance_scale=4.0,
        seed=seed,
        width=80,
        height=64,
        adapters=adapters,
    )


def pixels(editor: KleinEditor, adapters: Sequence[ActiveAdapter] = ()) -> bytes:
    return editor.edit(job(adapters)).image.tobytes()


def parsed(editor: KleinEditor, data: bytes) -> AdapterWeights:
    return editor.parse_adapter(data, name="loras[0]")


# -- the file ------------------------------------------------------------------------------------------


def test_a_peft_adapter_parses_with_its_hash_rank_and_modules(editor: KleinEditor) -> None:
    data = adapter_file(seed=1, rank=4)
    weights = parsed(editor, data)
    assert weights.nbytes == len(data)
    assert weights.rank == 4
    assert "transformer_blocks.0.attn.to_q" in weights.modules
    assert len(weights.sha256) == 64
    assert all(key.startswith("transformer.") for key in weights.state_dict)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (pickle_file(), "pickle"),
        (torch_save_file(), "torch.save"),
        (adapter_file(seed=2)[:-40], "truncated"),
        (adapter_file(seed=2)[:200], "truncated"),
        (b"", "too short"),
        (b"GIF89a not an adapter at all", "not a safetensors"),
        (wrong_shape_file(), "transformer_blocks.0.attn.to_q is 48 -> 32 in the adapter but 32 -> 32"),
    ],
    ids=["pickle", "torch-save", "truncated-tail", "truncated-header", "empty", "not-safetensors", "shape"],
)
def test_bad_files_are_invalid_adapters_naming_the_problem(
    editor: KleinEditor, data: bytes, words: str
) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parsed(editor, data)
    assert caught.value.code is ErrorCode.INVALID_ADAPTER
    assert not caught.value.retryable
    assert words in caught.value.message
    assert caught.value.message.startswith("loras[0]")


def test_a_module_the_model_lacks_is_named(editor: KleinEditor) -> None:
    state = adapter_state_dict(seed=1)
    state["transformer.transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(4, 32)
    state["transformer.transformer_blocks.7.attn.to_q.lora_B.weight"] = torch.zeros(32, 4)
    with pytest.raises(
        InvalidAdapter, match=r"module transformer_blocks\.7\.attn\.to_q is not a linear layer"
    ):
        parsed(editor, save(state))


def test_rank_over_the_limit_and_mismatched_ranks_are_refused(editor: KleinEditor) -> None:
    with pytest.raises(InvalidAdapter, match="rank 16, over this worker's limit of 8"):
        parse_adapter(adapter_file(seed=1, rank=16), name="a", targets=None, max_rank=8)
    state = adapter_state_dict(seed=1)
    state["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.zeros(32, 3)
    with pytest.raises(InvalidAdapter, match="lora_A has rank 4, lora_B has rank 3"):
        parsed(editor, save(state))


def test_non_lora_keys_and_text_encoder_keys_are_refused(editor: KleinEditor) -> None:
    with pytest.raises(InvalidAdapter, match=r"not a LoRA weight|LoRA layout"):
        parsed(editor, save({"transformer.transformer_blocks.0.attn.to_q.weight": torch.zeros(32, 32)}))
    state = adapter_state_dict(seed=1)
    state["text_encoder.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    with pytest.raises(InvalidAdapter, match="does not adapt the transformer"):
        parsed(editor, save(state))


def test_peft_bare_peft_model_and_diffusers_layouts_read_the_same(editor: KleinEditor) -> None:
    prefixed = adapter_state_dict(seed=6)
    bare = {key.removeprefix("transformer."): value for key, value in prefixed.items()}
    peft_model = {f"base_model.model.{key}": value for key, value in bare.items()}
    reference = parsed(editor, save(prefixed)).state_dict
    for layout in (bare, peft_model):
        got = parsed(editor, save(layout)).state_dict
        assert set(got) == set(reference)
        assert all(torch.equal(got[key], reference[key]) for key in reference)


def test_diffusers_lora_metadata_sets_alpha(editor: KleinEditor, tmp_path: Path) -> None:
    """A file saved by diffusers' `save_lora_weights` with alpha 8 at rank 4 acts as scale 2 of alpha 4."""
    bare = {key.removeprefix("transformer."): value for key, value in adapter_state_dict(seed=7).items()}
    metadata = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    Flux2KleinPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=bare, transformer_lora_adapter_metadata=metadata
    )
    (saved,) = tmp_path.iterdir()
    with_alpha = parsed(editor, saved.read_bytes())
    assert with_alpha.metadata is not None
    plain = parsed(editor, save(bare))
    assert pixels(editor, [ActiveAdapter(with_alpha, 1.0)]) == pixels(editor, [ActiveAdapter(plain, 2.0)])


# -- applying ------------------------------------------------------------------------------------------


def test_adapters_change_scale_and_combine_and_never_leak(editor: KleinEditor) -> None:
    fresh = KleinEditor.load(SETTINGS)
    baseline = pixels(fresh)
    first = parsed(editor, adapter_file(seed=11))
    second = parsed(editor, adapter_file(seed=12, rank=2))

    with_first = pixels(editor, [ActiveAdapter(first, 1.0)])
    assert with_first != baseline
    # Scale 0 contributes nothing: exactly the output without adapters.
    assert pixels(editor, [ActiveAdapter(first, 0.0)]) == baseline
    assert pixels(editor, [ActiveAdapter(first, -1.5)]) not in (baseline, with_first)
    with_second = pixels(editor, [ActiveAdapter(second, 1.0)])
    both = pixels(editor, [ActiveAdapter(first, 1.0), ActiveAdapter(second, 1.0)])
    assert both not in (baseline, with_first, with_second)
    # Order of the list does not matter; the same file twice acts once with the summed scale.
    assert pixels(editor, [ActiveAdapter(second, 1.0), ActiveAdapter(first, 1.0)]) == both
    assert pixels(editor, [ActiveAdapter(first, 0.5), ActiveAdapter(first, 0.5)]) == with_first
    # No leakage: without adapters after all of that, byte for byte what a fresh editor gives.
    assert pixels(editor) == baseline
    assert pixels(editor, [ActiveAdapter(first, 1.0)]) == with_first
    assert {first.name, second.name} <= set(editor.loaded_adapters())


def test_resident_adapters_are_bounded_and_reloaded_on_demand(editor: KleinEditor) -> None:
    files = [parsed(editor, adapter_file(seed=20 + i)) for i in range(4)]
    outputs = [editor.edit(job([ActiveAdapter(w, 1.0)])) for w in files]
    assert len(editor.loaded_adapters()) <= SETTINGS.resident_adapters
    assert files[0].name not in editor.loaded_adapters()
    assert outputs[0].adapter_load_ms > 0
    again = editor.edit(job([ActiveAdapter(files[0], 1.0)]))  # evicted: loaded again, same result
    assert again.adapter_load_ms > 0
    assert again.image.tobytes() == outputs[0].image.tobytes()
    resident = editor.edit(job([ActiveAdapter(files[0], 1.0)]))
    assert resident.adapter_load_ms == 0.0


def test_float8_with_adapters_is_refused_at_start_up() -> None:
    assert adapters_refusal(SETTINGS) is None
    assert adapters_refusal(SETTINGS.model_copy(update={"compile": True})) is None  # served by slots
    assert adapters_refusal(SETTINGS.model_copy(update={"quantize_float8": True, "max_adapters": 0})) is None
    settings = SETTINGS.model_copy(update={"quantize_float8": True})
    message = adapters_refusal(settings)
    assert message is not None
    assert "KLEIN_EDIT_PIPELINE__MAX_ADAPTERS=0" in message
    with pytest.raises(ModelLoadError, match="quantize_float8"):
        KleinEditor.load(settings)


# -- compiled transformers: fixed slots --------------------------------------------------------------


SLOT_SETTINGS = SETTINGS.model_copy(update={"max_adapters": 2, "max_adapter_rank": 8})


def slot_editor(settings: PipelineSettings = SLOT_SETTINGS) -> KleinEditor:
    """An eager editor with compile's adapter slots (the same code path, without compiling)."""
    pipe, name = load_pipeline(settings)
    slots = AdapterSlots(
        pipe,
        slots=settings.max_adapters,
        rank=settings.max_adapter_rank,
        modules=slot_modules(pipe.transformer),
    )
    return KleinEditor(pipe, settings, name, adapter_slots=slots)


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).astype(np.int16)


def test_adapter_slots_match_loaded_adapters_and_never_leak(editor: KleinEditor) -> None:
    slotted = slot_editor()
    baseline = pixels(slotted)
    first = parsed(slotted, adapter_file(seed=11))
    second = parsed(slotted, adapter_file(seed=12, rank=2))
    cases = [
        [ActiveAdapter(first, 1.0)],
        [ActiveAdapter(first, -1.5)],
        [ActiveAdapter(first, 1.0), ActiveAdapter(second, 0.7)],
        [ActiveAdapter(second, 0.7)],
    ]
    for adapters in cases:
        got, expected = as_array(pixels(slotted, adapters)), as_array(pixels(editor, adapters))
        # The scale is folded into lora_B instead of applied after it: equal up to float rounding.
        assert np.abs(got - expected).max() <= 2, adapters
        assert not np.array_equal(got, as_array(baseline))
    assert pixels(slotted, [ActiveAdapter(first, 0.0)]) == baseline
    assert pixels(slotted) == baseline  # every slot zeroed again: a fresh slotted editor's output
    held = slotted.edit(job([ActiveAdapter(first, 1.0)]))
    assert held.adapter_load_ms > 0
    assert slotted.edit(job([ActiveAdapter(first, 1.0)])).adapter_load_ms == 0.0  # still in its slot


def test_adapter_slots_refuse_what_they_cannot_hold() -> None:
    slotted = slot_editor()
    with pytest.raises(InvalidAdapter, match="rank 16, over"):
        parsed(slotted, adapter_file(seed=1, rank=16))
    state = adapter_state_dict(seed=1)
    state["transformer.proj_out.lora_A.weight"] = torch.zeros(4, 32)
    state["transformer.proj_out.lora_B.weight"] = torch.zeros(16, 4)
    with pytest.raises(InvalidAdapter, match="module proj_out is not"):
        parsed(slotted, save(state))


@pytest.mark.slow  # torch.compile of the tiny blocks on the CPU: about a minute
def test_compiled_transformer_swaps_adapters_and_scales_without_recompiling() -> None:
    compiled = KleinEditor.load(SLOT_SETTINGS.model_copy(update={"compile": True}))
    baseline = pixels(compiled)
    graphs = compiled.compilations
    assert graphs > 0
    first = parsed(compiled, adapter_file(seed=11))
    second = parsed(compiled, adapter_file(seed=12, rank=2))
    outputs = [
        pixels(compiled, adapters)
        for adapters in (
            [ActiveAdapter(first, 1.0)],
            [ActiveAdapter(first, 0.5)],
            [ActiveAdapter(second, 1.0), ActiveAdapter(first, -1.0)],
            [],
            [ActiveAdapter(second, 2.0)],
            [],
        )
    ]
    assert compiled.compilations == graphs  # new adapters, scales, sets and none: no recompilation
    assert len(set(outputs[:3] + outputs[4:5])) == 4
    assert baseline not in outputs[:3]
    assert outputs[3] == outputs[5] == baseline  # no leakage, byte for byte

"""LoRA adapters on the tiny model: file checks, and applying them through `KleinEditor` (no leakage)."""

from __future__ import annotations

import io
import pickle
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
    diffusers_file,
    dora_scales,
    header_length,
    kohya_layout,
    kohya_text_encoder_keys,
    onetrainer_layout,
    pickle_file,
    torch_save_file,
    with_metadata_of_length,
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


def legacy_torch_save_file() -> bytes:
    """`torch.save` without its zip container (PyTorch before 1.6): a bare pickle of protocol 2."""
    buffer = io.BytesIO()
    torch.save(adapter_state_dict(seed=3), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def header_then(header: bytes, length: int | None = None) -> bytes:
    """A file holding `header` after a length field that declares `length` bytes (its own by default)."""
    return (len(header) if length is None else length).to_bytes(8, "little") + header


# A valid file whose first byte is 0x80 (pickle's PROTO) and whose header is 0x1080 bytes long.
PROTO_BYTE_FILE = diffusers_file(seed=2, length=0x1080)
PICKLE_LIKE_LENGTH = 0x480  # a file with this header begins \x80\x04, as a protocol-4 pickle does


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (pickle_file(), "a pickle file"),
        *[(pickle.dumps({"w": [1.0]}, protocol=p), "a pickle file") for p in (2, 3, 4, 5)],
        (legacy_torch_save_file(), "a pickle file"),
        (torch_save_file(), "a zip archive (a torch.save checkpoint)"),
        (adapter_file(seed=2)[:-40], "truncated: its tensors need"),
        (adapter_file(seed=2)[:200], "truncated: its safetensors header declares"),
        (PROTO_BYTE_FILE[:-40], "truncated: its tensors need"),
        (PROTO_BYTE_FILE[:1000], "truncated: its safetensors header declares 4224 bytes, the file has 992"),
        (PROTO_BYTE_FILE[:8], "truncated: its safetensors header declares 4224 bytes, the file ends"),
        (
            header_then(b'{"a": {"dtype": "F32", "shape": [1], "dat', 80),
            "truncated: its safetensors header declares 80 bytes, the file has 41",
        ),
        (header_then(b'{"a": {"dtype": '), "header is malformed"),
        (header_then(b"{\xff\xfe}"), "header is malformed"),
        (
            header_then(b'{"a": {"shape": []}}'),
            "header is malformed (tensor 'a' has no valid data_offsets)",
        ),
        (header_then(b'{"__metadata__": {"a": 1}}'), "header is malformed (__metadata__"),
        (header_then(b'{"a": 1}', 200_000_000), "over the format's limit of 100000000"),
        (b"", "too short"),
        (b"GIF89a not an adapter at all", "not a safetensors"),
        (wrong_shape_file(), "transformer_blocks.0.attn.to_q is 48 -> 32 in the adapter but 32 -> 32"),
    ],
    ids=[
        "pickle",
        *[f"pickle-protocol-{p}" for p in (2, 3, 4, 5)],
        "torch-save-legacy",
        "torch-save-zip",
        "truncated-tail",
        "truncated-header",
        "truncated-tail-0x80",
        "truncated-header-0x80",
        "only-the-length-0x80",
        "truncated-header-json",
        "malformed-json",
        "malformed-utf8",
        "malformed-offsets",
        "malformed-metadata",
        "header-over-limit",
        "empty",
        "not-safetensors",
        "shape",
    ],
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
    if "truncated" in words or "malformed" in words:
        assert "pickle" not in caught.value.message
        assert "zip" not in caught.value.message


# -- the format: a file is recognised by what it is, whatever its first bytes ---------------------------


@pytest.fixture(scope="module")
def every_first_byte() -> dict[int, bytes]:
    """The same adapter saved by diffusers with 32 header lengths: one per first byte a file can have.

    safetensors pads its header to a multiple of 8, so the low byte of the length (the file's first
    byte) takes 32 values; 0x80, one file in 32, is pickle's PROTO opcode.
    """
    shortest = header_length(diffusers_file(seed=31))
    return {
        low: diffusers_file(seed=31, length=shortest + (low - shortest) % 256) for low in range(0, 256, 8)
    }


def test_diffusers_files_of_every_header_length_are_read_alike(
    editor: KleinEditor, every_first_byte: dict[int, bytes]
) -> None:
    reference = parsed(editor, every_first_byte[0])
    assert reference.metadata is not None
    assert reference.metadata["transformer.r"] == 4
    for low, data in every_first_byte.items():
        assert data[0] == low
        weights = parsed(editor, data)
        assert set(weights.state_dict) == set(reference.state_dict)
        assert all(torch.equal(weights.state_dict[k], reference.state_dict[k]) for k in reference.state_dict)
        assert weights.modules == reference.modules
        assert weights.metadata is not None


def test_the_file_that_begins_like_a_pickle_changes_the_edit(
    editor: KleinEditor, every_first_byte: dict[int, bytes]
) -> None:
    data = every_first_byte[0x80]
    weights = parsed(editor, data)
    baseline = pixels(editor)
    assert pixels(editor, [ActiveAdapter(weights, 1.0)]) != baseline
    assert pixels(editor) == baseline


def test_a_header_of_pickle_proto_and_protocol_bytes_is_safetensors(editor: KleinEditor) -> None:
    state = adapter_state_dict(seed=32, targets=("to_q",))
    data = with_metadata_of_length(state, PICKLE_LIKE_LENGTH)
    assert data[:2] == b"\x80\x04"  # what pickle.dumps(..., protocol=4) begins with
    assert set(parsed(editor, data).state_dict) == set(state)


def test_a_header_of_the_zip_magic_length_is_safetensors(editor: KleinEditor) -> None:
    """A 64 MiB `__metadata__` (0x04034B50 bytes of header) makes a valid file begin with PK\\x03\\x04."""
    state = adapter_state_dict(seed=33)
    data = with_metadata_of_length(state, 0x04034B50)
    assert data[:4] == b"PK\x03\x04"
    weights = parsed(editor, data)
    assert all(torch.equal(weights.state_dict[k], state[k]) for k in state)


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
    with pytest.raises(InvalidAdapter, match=r"not LoRA weights|LoRA layout"):
        parsed(editor, save({"transformer.transformer_blocks.0.attn.to_q.weight": torch.zeros(32, 32)}))
    state = adapter_state_dict(seed=1)
    state["text_encoder.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    with pytest.raises(InvalidAdapter, match="do not adapt the transformer"):
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


# -- trainer layouts: accepted where diffusers reads every key, refused where it would drop any ------------


def test_a_kohya_adapter_reads_and_edits_as_its_peft_original(editor: KleinEditor) -> None:
    state = adapter_state_dict(seed=34)
    kohya = parsed(editor, save(kohya_layout(state)))
    assert set(kohya.state_dict) == set(state)
    assert all(torch.equal(kohya.state_dict[k], state[k]) for k in state)
    original = parsed(editor, save(state))
    with_kohya = pixels(editor, [ActiveAdapter(kohya, 1.0)])
    assert with_kohya == pixels(editor, [ActiveAdapter(original, 1.0)])
    assert with_kohya != pixels(editor)


KOHYA = kohya_layout(adapter_state_dict(seed=35))
TEXT_ENCODER_MODULE = "lora_te_model_layers_0_self_attn_q_proj"


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        (
            {**KOHYA, **kohya_text_encoder_keys()},
            [
                "kohya's layout (lora_unet_",
                "diffusers would drop 3 of its 15 keys",
                f"'{TEXT_ENCODER_MODULE}.alpha'",
                f"'{TEXT_ENCODER_MODULE}.lora_down.weight'",
            ],
        ),
        (kohya_text_encoder_keys(), ["kohya's layout (lora_te", "diffusers loads no FLUX.2 weights"]),
        (
            {**KOHYA, **dora_scales(KOHYA)},
            ["a DoRA adapter", "'lora_unet_double_blocks_0_img_attn_proj.dora_scale'", "and 1 more"],
        ),
        (
            {
                **adapter_state_dict(seed=36),
                "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": torch.ones(32),
            },
            ["a DoRA adapter", "to_q.lora_magnitude_vector"],
        ),
        (
            onetrainer_layout(adapter_state_dict(seed=37), legacy=False),
            [
                "OneTrainer's layout (lora_transformer.<module>",
                "diffusers loads no FLUX.2 weights",
                "DIFFUSERS",
            ],
        ),
        (
            onetrainer_layout(adapter_state_dict(seed=37), legacy=True),
            ["OneTrainer's legacy layout (lora_transformer_<module>", "diffusers loads no FLUX.2 weights"],
        ),
    ],
    ids=[
        "kohya-text-encoder",
        "kohya-text-encoder-only",
        "kohya-dora",
        "peft-dora",
        "onetrainer",
        "onetrainer-legacy",
    ],
)
def test_layouts_diffusers_would_load_in_part_or_not_at_all_are_refused_naming_them(
    editor: KleinEditor, layout: dict[str, torch.Tensor], words: list[str]
) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parsed(editor, save(layout))
    assert caught.value.code is ErrorCode.INVALID_ADAPTER
    assert not caught.value.retryable
    for word in words:
        assert word in caught.value.message


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

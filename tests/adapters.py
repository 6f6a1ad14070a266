"""Tiny LoRA adapters for the tiny model, made with peft exactly as a trainer would save them.

A fresh tiny `Flux2Transformer2DModel` (same config as `tiny-random`) gets peft LoRA layers with random
(non-zero) weights; `get_peft_model_state_dict` gives the trained-adapter layout, saved with safetensors
under the `transformer.` prefix that diffusers' `load_lora_weights` reads. `diffusers_file` saves them
as diffusers' training scripts do (`save_lora_weights` with the peft config as metadata), and the
`*_layout` functions rename the same weights into other trainers' key layouts (kohya, OneTrainer).
"""

from __future__ import annotations

import io
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save

from pipeline.tiny import tiny_transformer_config

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def adapter_state_dict(
    *, seed: int, rank: int = 4, targets: tuple[str, ...] = ATTENTION, strength: float = 0.5
) -> dict[str, torch.Tensor]:
    """`transformer.`-prefixed LoRA weights: lora_A (rank, in) and lora_B (out, rank), N(0, strength)."""
    torch.manual_seed(seed)
    model = Flux2Transformer2DModel(**tiny_transformer_config())
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False)
    model = inject_adapter_in_model(config, model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * strength)
    state = get_peft_model_state_dict(model)
    return {f"transformer.{key}": value.contiguous() for key, value in state.items()}


def adapter_file(**kwargs: object) -> bytes:
    """`adapter_state_dict(**kwargs)` as safetensors bytes."""
    return save(adapter_state_dict(**kwargs))  # type: ignore[arg-type]


def wrong_shape_file(seed: int = 9) -> bytes:
    """An adapter whose to_q of the first block expects 48 inputs (the tiny model has 32)."""
    state = adapter_state_dict(seed=seed)
    key = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    state[key] = torch.zeros(state[key].shape[0], 48)
    return save(state)


def pickle_file(seed: int = 3) -> bytes:
    """The same weights as a plain pickle (what a .bin/.pt from an untrusted source may be)."""
    return pickle.dumps(adapter_state_dict(seed=seed))


def torch_save_file(seed: int = 3) -> bytes:
    buffer = io.BytesIO()
    torch.save(adapter_state_dict(seed=seed), buffer)
    return buffer.getvalue()


def header_length(data: bytes) -> int:
    """The safetensors header length: the file's first 8 bytes, little-endian."""
    return int.from_bytes(data[:8], "little")


def diffusers_file(*, seed: int, length: int | None = None, rank: int = 4) -> bytes:
    """An adapter saved as diffusers' training scripts save one, with a header of `length` bytes if given.

    The transformer gets its LoRA layers with `add_adapter`; `save_lora_weights` writes the weights with
    the peft config as `lora_adapter_metadata` (`_collate_lora_metadata` in diffusers' `training_utils`).
    The config's `base_model_name_or_path`, a path of the user's choosing, sets the header's length:
    safetensors pads a header to a multiple of 8, so `length` must be one, and at least `diffusers_file`'s
    length without it.
    """
    torch.manual_seed(seed)
    model: Any = Flux2Transformer2DModel(**tiny_transformer_config())
    model.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=list(ATTENTION), init_lora_weights="gaussian")
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    layers = get_peft_model_state_dict(model)
    config = model.peft_config["default"]

    def saved(base_model: str) -> bytes:
        config.base_model_name_or_path = base_model
        with tempfile.TemporaryDirectory() as folder:
            Flux2KleinPipeline.save_lora_weights(
                folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config.to_dict()
            )
            (path,) = Path(folder).iterdir()
            return path.read_bytes()

    base_model = "/models/FLUX.2-klein-base-4B/run-"
    data = saved(base_model)
    if length is None:
        return data
    shortest = header_length(data)
    if length % 8 or length < shortest:
        raise ValueError(f"header length {length}: must be a multiple of 8 and at least {shortest}")
    # Each character of the path is one more byte of header, and the padding hides the remainder.
    data = saved(base_model + "0" * (length - shortest))
    assert header_length(data) == length
    return data


def kohya_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`adapter_state_dict` weights (ATTENTION targets) in kohya's FLUX.2 layout, exactly.

    Kohya fuses to_q/to_k/to_v into `img_attn_qkv`: the three lora_A stacked (rank 3r) and the three
    lora_B block-diagonal, which diffusers' conversion splits back into the same matrices.
    """
    blocks = sorted({key.split(".")[2] for key in state if key.startswith("transformer.transformer_blocks.")})
    kohya: dict[str, torch.Tensor] = {}
    for block in blocks:
        module = f"transformer.transformer_blocks.{block}.attn"
        down = [state[f"{module}.{p}.lora_A.weight"] for p in ("to_q", "to_k", "to_v")]
        up = [state[f"{module}.{p}.lora_B.weight"] for p in ("to_q", "to_k", "to_v")]
        qkv, proj = (
            f"lora_unet_double_blocks_{block}_img_attn_qkv",
            f"lora_unet_double_blocks_{block}_img_attn_proj",
        )
        kohya[f"{qkv}.lora_down.weight"] = torch.cat(down)
        kohya[f"{qkv}.lora_up.weight"] = torch.block_diag(*up)  # type: ignore[no-untyped-call]
        kohya[f"{qkv}.alpha"] = torch.tensor(float(sum(d.shape[0] for d in down)))
        kohya[f"{proj}.lora_down.weight"] = state[f"{module}.to_out.0.lora_A.weight"]
        kohya[f"{proj}.lora_up.weight"] = state[f"{module}.to_out.0.lora_B.weight"]
        kohya[f"{proj}.alpha"] = torch.tensor(float(state[f"{module}.to_out.0.lora_A.weight"].shape[0]))
    return kohya


def kohya_text_encoder_keys(rank: int = 4) -> dict[str, torch.Tensor]:
    """A kohya `lora_te` module: a text-encoder LoRA, which diffusers' FLUX.2 conversion drops."""
    module = "lora_te_model_layers_0_self_attn_q_proj"
    return {
        f"{module}.lora_down.weight": torch.randn(rank, 64),
        f"{module}.lora_up.weight": torch.randn(64, rank),
        f"{module}.alpha": torch.tensor(float(rank)),
    }


def dora_scales(kohya: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kohya / LyCORIS DoRA magnitudes (`<module>.dora_scale`, one per output row) for each module."""
    return {
        key.replace(".lora_up.weight", ".dora_scale"): torch.ones(tensor.shape[0], 1)
        for key, tensor in kohya.items()
        if key.endswith(".lora_up.weight")
    }


def onetrainer_layout(state: dict[str, torch.Tensor], *, legacy: bool) -> dict[str, torch.Tensor]:
    """`adapter_state_dict` weights in OneTrainer's FLUX layout: diffusers module names under
    `lora_transformer`, dotted (`lora_transformer.transformer_blocks.0.attn.to_q.lora_down.weight`) or,
    `legacy`, with the module path's dots as underscores (`lora_transformer_transformer_blocks_0_...`)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module = key.removeprefix("transformer.").rsplit(".lora_", 1)[0]
        module = "lora_transformer_" + module.replace(".", "_") if legacy else "lora_transformer." + module
        if key.endswith(".lora_A.weight"):
            out[f"{module}.lora_down.weight"] = tensor
            out[f"{module}.alpha"] = torch.tensor(float(tensor.shape[0]))
        else:
            out[f"{module}.lora_up.weight"] = tensor
    return out


def with_metadata_of_length(state: dict[str, torch.Tensor], length: int) -> bytes:
    """`state` as safetensors with a header of exactly `length` bytes, padded by training metadata (as
    kohya's `ss_*` keys pad real files); `length` must be a multiple of 8."""
    bare = header_length(save(state, metadata={"ss_tag_frequency": ""}))  # type: ignore[arg-type]
    if length % 8 or length < bare:
        raise ValueError(f"header length {length}: must be a multiple of 8 and at least {bare}")
    data = save(state, metadata={"ss_tag_frequency": "0" * (length - bare)})  # type: ignore[arg-type]
    assert header_length(data) == length
    return data

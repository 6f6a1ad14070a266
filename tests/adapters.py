"""Tiny LoRA adapters for the tiny model, made with peft exactly as a trainer would save them.

A fresh tiny `Flux2Transformer2DModel` (same config as `tiny-random`) gets peft LoRA layers with random
(non-zero) weights; `get_peft_model_state_dict` gives the trained-adapter layout, saved with safetensors
under the `transformer.` prefix that diffusers' `load_lora_weights` reads.
"""

from __future__ import annotations

import io
import pickle

import torch
from diffusers import Flux2Transformer2DModel
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

"""Weight memory of each placement profile at the real FLUX.2 [klein] 9B dimensions, without allocating.

The models are built on PyTorch's meta device (shapes only), so this runs on any machine in seconds. For
each profile it gives the bytes of weights resident on the GPU after loading, and the peak while loading:
`pipeline.loader.place_components` moves one piece at a time (a transformer block, a text-encoder layer)
and quantizes it on arrival, so the peak is what is already placed plus one piece in bf16.

float8 bytes follow torchao's dynamic float8 with per-row scales: 1 byte per weight plus one float32 scale
per output row, for the Linear layers `pipeline.optimize` quantizes; every other tensor stays bf16.
Activations, the CUDA context and the allocator's slack come on top (measured figures:
docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config import PipelineSettings

# diffusers scripts/convert_flux2_to_diffusers.py "klein-9b" (same numbers as BFL's Klein9BParams).
TRANSFORMER_9B: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 8,
    "num_single_layers": 24,
    "attention_head_dim": 128,
    "num_attention_heads": 32,
    "joint_attention_dim": 12288,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}
# Qwen/Qwen3-8B config.json.
QWEN3_8B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1_000_000,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
}

BF16_BYTES = 2
FLOAT8_SCALE_BYTES = 4  # one float32 scale per output row (PerRow granularity)

# The placement profiles docs/operations.md's sizing table lists, as the settings that select them.
PROFILES: dict[str, dict[str, Any]] = {
    "bf16 (default)": {},
    "float8 transformer": {"quantize_float8": True},
    "float8 transformer + float8 text encoder": {"quantize_float8": True, "text_encoder_placement": "float8"},
    "float8 transformer + text encoder on the CPU": {
        "quantize_float8": True,
        "text_encoder_placement": "cpu_offload",
    },
}


@dataclass(frozen=True)
class ProfileBytes:
    """Bytes of weights on the GPU for one profile: after loading, and the peak while loading."""

    resident: int
    peak_while_loading: int
    host: int  # weights kept in host memory (the offloaded text encoder)


def meta_components() -> dict[str, torch.nn.Module]:
    """The 9B text encoder, transformer and VAE on the meta device (no memory, no weights)."""
    diffusers: Any = importlib.import_module("diffusers")
    transformers: Any = importlib.import_module("transformers")
    with torch.device("meta"):
        return {
            "text_encoder": transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**QWEN3_8B)),
            "transformer": diffusers.Flux2Transformer2DModel(**TRANSFORMER_9B),
            "vae": diffusers.AutoencoderKLFlux2(),
        }


def profile_weight_bytes(
    settings: PipelineSettings, components: dict[str, torch.nn.Module] | None = None
) -> ProfileBytes:
    """Weight bytes on the GPU for `settings`' placement, in the order `place_components` loads."""
    from pipeline.loader import placement_parts, placement_plan
    from pipeline.optimize import float8_filter

    components = components or meta_components()
    resident = peak = host = 0
    for name, on_gpu, skip in placement_plan(settings):
        for prefix, part, recurse in placement_parts(components[name]):
            bf16 = _tensor_bytes(part, recurse, lambda _m, _n: False)
            final = bf16 if skip is None else _tensor_bytes(part, recurse, float8_filter(skip, prefix))
            if not on_gpu:
                host += final
                continue
            peak = max(peak, resident + bf16)
            resident += final
    return ProfileBytes(resident=resident, peak_while_loading=max(peak, resident), host=host)


def _tensor_bytes(
    module: torch.nn.Module, recurse: bool, quantized: Callable[[torch.nn.Module, str], bool]
) -> int:
    total = 0
    modules = module.named_modules() if recurse else iter([("", module)])
    for fqn, sub in modules:
        for pname, param in sub.named_parameters(recurse=False):
            if pname == "weight" and isinstance(sub, torch.nn.Linear) and quantized(sub, fqn):
                total += param.numel() + sub.out_features * FLOAT8_SCALE_BYTES
            else:
                total += param.numel() * BF16_BYTES
    return total

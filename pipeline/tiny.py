"""An offline, tiny, random-weight `Flux2KleinPipeline` with the same classes as FLUX.2 [klein] base.

Used for CPU demos and tests: nothing is downloaded. It is written once as a real model directory
(`save_pretrained`, see `write_tiny_model` / `ensure_tiny_model`) and then loaded through exactly the
same `load_pipeline` path as a Hub id or a local directory, so the tests exercise the production loading
code. The tokenizer is a byte-level BPE trained in-process
and wrapped as `Qwen2TokenizerFast` with a Qwen3-style chat template; the models are built from tiny configs
that keep every structural coupling of the real 9B model:

* the text encoder has 28 layers, so the pipeline's default hidden-state taps (9, 18, 27) exist and
  layer 27 is an intermediate layer, as in the 36-layer Qwen3-8B;
* transformer `joint_attention_dim == 3 * text hidden size` (three stacked hidden-state layers);
* transformer `in_channels == 4 * VAE latent channels` (2x2 patchify), and the VAE has 4 blocks, so
  the image-to-token stride is 16 like the real model;
* `is_distilled=False`: real classifier-free guidance with the empty negative prompt.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

# Qwen2/Qwen3 pre-tokenisation regex (as in transformers' Qwen2 tokenizer).
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Renders a single user turn exactly as Qwen3's template does with enable_thinking=False, which is how
# Flux2KleinPipeline formats every prompt.
_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_TRAINING_TEXT = [
    "user assistant",
    "make the sky purple and add a moon",
    "replace the background with a sunny beach",
    "recolor the sneakers to the exact color",
    "keep its material texture shading and everything else unchanged",
    "put the person from image 1 into the scene of image 2",
]

TEXT_HIDDEN = 32
TEXT_LAYERS = 28
VOCAB_SIZE = 512
LATENT_CHANNELS = 4


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> Any:
    """A Qwen2TokenizerFast over a byte-level BPE trained here (no files, no network)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    transformers: Any = importlib.import_module("transformers")

    bpe = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TRAINING_TEXT * 4, trainer=trainer)
    return transformers.Qwen2TokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",  # Qwen3 pads with it, and the pipeline pads every prompt to full length
        unk_token=None,
        bos_token=None,
        chat_template=_CHAT_TEMPLATE,
        model_max_length=131072,
    )


def tiny_text_encoder_config() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 1024,
        "rope_theta": 1_000_000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "attention_bias": False,
    }


def tiny_transformer_config() -> dict[str, Any]:
    return {
        "patch_size": 1,
        "in_channels": 4 * LATENT_CHANNELS,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 3 * TEXT_HIDDEN,
        "timestep_guidance_channels": 256,
        "mlp_ratio": 3.0,
        "axes_dims_rope": (4, 4, 4, 4),  # must sum to attention_head_dim
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": False,
    }


def tiny_vae_config() -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 16, 16, 16),
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 4,
        "sample_size": 64,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
        "batch_norm_eps": 1e-4,
        "batch_norm_momentum": 0.1,
        "patch_size": (2, 2),
    }


def scheduler_config() -> dict[str, Any]:
    """The FLUX scheduler config that diffusers' FLUX.2 conversion script ships with the real pipelines."""
    return {
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }


def build_tiny_pipeline(seed: int = 0) -> Any:
    """A float32 CPU `Flux2KleinPipeline` with random weights; the same seed gives the same weights."""
    diffusers: Any = importlib.import_module("diffusers")
    transformers: Any = importlib.import_module("transformers")

    tokenizer = build_tokenizer()
    # fork_rng keeps the caller's global RNG state untouched while seeding each component.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = transformers.Qwen3ForCausalLM(
            transformers.Qwen3Config(**tiny_text_encoder_config())
        ).eval()
        torch.manual_seed(seed + 1)
        transformer = diffusers.Flux2Transformer2DModel(**tiny_transformer_config()).eval()
        torch.manual_seed(seed + 2)
        vae = diffusers.AutoencoderKLFlux2(**tiny_vae_config()).eval()
    return assemble_pipeline(transformer=transformer, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer)


def assemble_pipeline(*, transformer: Any, text_encoder: Any, vae: Any, tokenizer: Any) -> Any:
    """A `Flux2KleinPipeline` (the Base model: not distilled) around frozen components, no progress bar."""
    diffusers: Any = importlib.import_module("diffusers")
    for module in (text_encoder, transformer, vae):
        module.requires_grad_(False)
    pipe = diffusers.Flux2KleinPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**scheduler_config()),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Bump when the tiny model's construction changes in a way its configs do not show (e.g. the tokenizer's
# training text), so a stale cached directory is never reused.
_TINY_FORMAT = 1


def tiny_model_key(seed: int = 0) -> str:
    """A short hash of everything that determines the tiny model's files (configs, seed, versions)."""
    diffusers: Any = importlib.import_module("diffusers")
    transformers: Any = importlib.import_module("transformers")
    spec = {
        "format": _TINY_FORMAT,
        "seed": seed,
        "text_encoder": tiny_text_encoder_config(),
        "transformer": tiny_transformer_config(),
        "vae": tiny_vae_config(),
        "scheduler": scheduler_config(),
        "training_text": _TRAINING_TEXT,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:16]


def write_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to `directory` with `save_pretrained` (a diffusers model directory).

    The directory then holds `model_index.json` and one folder per component, like a downloaded model;
    the same `seed` always writes the same weights. Returns the directory.
    """
    target = Path(directory)
    build_tiny_pipeline(seed=seed).save_pretrained(str(target), safe_serialization=True)
    return target


def ensure_tiny_model(cache_root: str | Path, seed: int = 0) -> Path:
    """The tiny model's directory under `cache_root`, written on first use.

    Several processes (test workers, a demo) may ask at once: each writes into a private temporary
    directory and renames it into place atomically, so a reader never sees a half-written model.
    """
    root = Path(cache_root).expanduser()
    final = root / f"klein-edit--tiny-random-{tiny_model_key(seed)}"
    if (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-random-", dir=root))
    try:
        write_tiny_model(scratch / "model", seed=seed)
        try:
            os.replace(scratch / "model", final)
        except OSError:
            # Another process won the race; its directory is identical (same key, same seed).
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final

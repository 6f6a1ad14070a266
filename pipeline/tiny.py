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

Random initialisation alone makes a numb instrument: every transformer block's update is gated by a
modulation of about 0.02, so the output is the noise passed through: the base image and each reference
move it by about 0.02 of 255 levels, the prompt by 1 to 2, a LoRA adapter by 5 to 8. `condition_weights`
rescales a few weights after the seeded init, deterministically, so that each input moves the output
clearly: a mean of 16 to 35 levels for the base image, each reference, the prompt, the seed and a LoRA
adapter on 64x64 edits with two references at 4 and 25 steps (tests/pipeline/test_tiny_sensitivity.py).
These are the weights written to the directory; nothing in the loading or edit path knows about them:

* timestep embedding x10 (`TIMESTEP_EMBEDDING_GAIN`) and the three modulation layers x3
  (`MODULATION_GAIN`): shift, scale and gate are then about 0.8 in magnitude, not 0.02, so every block
  really updates the residual stream instead of passing the noise latents through;
* the q/k RMSNorm weights x3 (`QK_NORM_GAIN`): attention logits spread 9x wider (std ~9, not ~1), so
  a query picks out particular tokens instead of averaging the few image tokens into ~500 near-identical
  padding tokens of the prompt;
* the attention output projections x3 (`ATTENTION_OUT_GAIN`; in a single-stream block the one
  projection of attention and MLP together): what attention brings in from the reference tokens and
  the prompt is then as large as the token's own state;
* the VAE's latent batch-norm statistics are measured on fixed calibration images (as the real VAE's
  are on data), so reference tokens have unit variance like the noise instead of being a per-channel
  constant with a small ripple; `post_quant_conv` folds the de-normalisation back in, so the decoder
  sees normalised latents exactly as it would with identity statistics.
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
    condition_weights(transformer=transformer, vae=vae)
    return assemble_pipeline(transformer=transformer, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer)


# Gains on the random init, applied by `condition_weights` (reasons in the module docstring). They are part
# of `tiny_model_key`, so changing one writes a new directory.
TIMESTEP_EMBEDDING_GAIN = 10.0
MODULATION_GAIN = 3.0
QK_NORM_GAIN = 3.0
ATTENTION_OUT_GAIN = 3.0
# The batch-norm statistics are rounded to this step: the same weights then come out of every build, even
# where a different thread count changes the calibration encode in its last bits.
_STATISTICS_STEP = 2.0**-12


def _gains() -> dict[str, float]:
    return {
        "timestep_embedding": TIMESTEP_EMBEDDING_GAIN,
        "modulation": MODULATION_GAIN,
        "qk_norm": QK_NORM_GAIN,
        "attention_out": ATTENTION_OUT_GAIN,
        "statistics_step": _STATISTICS_STEP,
    }


@torch.no_grad()
def condition_weights(*, transformer: Any, vae: Any) -> None:
    """Rescale the freshly initialised tiny transformer and calibrate the VAE, in place (no RNG used).

    Makes the base image, each reference, the prompt and a LoRA adapter each move the output clearly; see
    the module docstring for why each weight is touched.
    """
    transformer.time_guidance_embed.timestep_embedder.linear_2.weight.mul_(TIMESTEP_EMBEDDING_GAIN)
    for modulation in (
        transformer.double_stream_modulation_img,
        transformer.double_stream_modulation_txt,
        transformer.single_stream_modulation,
    ):
        modulation.linear.weight.mul_(MODULATION_GAIN)
    for block in transformer.transformer_blocks:  # double-stream: image and text projections apart
        attention = block.attn
        for norm in (attention.norm_q, attention.norm_k, attention.norm_added_q, attention.norm_added_k):
            norm.weight.mul_(QK_NORM_GAIN)
        for projection in (attention.to_out[0], attention.to_add_out):
            projection.weight.mul_(ATTENTION_OUT_GAIN)
    for block in transformer.single_transformer_blocks:  # to_out projects attention and MLP outputs at once
        block.attn.norm_q.weight.mul_(QK_NORM_GAIN)
        block.attn.norm_k.weight.mul_(QK_NORM_GAIN)
        block.attn.to_out.weight.mul_(ATTENTION_OUT_GAIN)
    _calibrate_latent_statistics(vae)


def _calibration_images(size: int = 64) -> torch.Tensor:
    """(8, 3, size, size) in [-1, 1], as the pipeline feeds the VAE: six flat colours and two gradients."""
    colours = torch.tensor(
        [
            [0.85, 0.1, 0.1],
            [0.1, 0.8, 0.15],
            [0.1, 0.1, 0.85],
            [0.5, 0.5, 0.5],
            [0.95, 0.9, 0.8],
            [0.1, 0.1, 0.1],
        ]
    )
    flat = colours.view(-1, 3, 1, 1).expand(-1, -1, size, size)
    ramp = torch.linspace(0.0, 1.0, size)
    across = torch.stack([ramp.view(1, -1).expand(size, -1), ramp.view(-1, 1).expand(-1, size)])
    gradients = torch.stack(
        [
            torch.cat([across, torch.full((1, size, size), 0.5)]),
            torch.cat([1 - across.flip(0), (across[0] * across[1]).unsqueeze(0)]),
        ]
    )
    return torch.cat([flat, gradients]) * 2 - 1


def _calibrate_latent_statistics(vae: Any) -> None:
    """Set `vae.bn` to the per-channel latent statistics of `_calibration_images`; keep the decoder's view.

    The pipeline normalises encoded latents with `bn` and de-normalises before decoding; `post_quant_conv`
    (the decoder's first layer) absorbs that de-normalisation, so the decoder maps normalised latents to
    pixels as it did with identity statistics. The 16 `bn` channels are the 4 latent channels x 2x2 patch
    positions (the pipeline's patchify order), so each latent channel's statistic is repeated 4 times.
    """
    latents = vae.encode(_calibration_images()).latent_dist.mode()  # (8, 4, 8, 8); the pipeline's argmax
    step = _STATISTICS_STEP
    mean = torch.round(latents.mean(dim=(0, 2, 3)) / step) * step
    var = torch.round(latents.var(dim=(0, 2, 3)) / step) * step
    patches = 4
    vae.bn.running_mean.copy_(mean.repeat_interleave(patches))
    vae.bn.running_var.copy_(var.repeat_interleave(patches))
    std = torch.sqrt(var + vae.config.batch_norm_eps)  # as the pipeline computes it
    # post_quant_conv(z * std + mean) == post_quant_conv_before(z): divide the weight, shift the bias.
    conv = vae.post_quant_conv
    weight = conv.weight / std.view(1, -1, 1, 1)
    conv.bias.sub_((weight[:, :, 0, 0] * mean.view(1, -1)).sum(dim=1))
    conv.weight.copy_(weight)


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
_TINY_FORMAT = 2  # 2: conditioned weights (`condition_weights`)


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
        "gains": _gains(),
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

"""The tiny pipeline keeps the structural couplings of FLUX.2 [klein] base and is seed-deterministic."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.tiny import build_tiny_pipeline


def test_structure_matches_klein(tiny_pipe: Any) -> None:
    text, transformer, vae = tiny_pipe.text_encoder, tiny_pipe.transformer, tiny_pipe.vae
    assert type(tiny_pipe).__name__ == "Flux2KleinPipeline"
    assert type(text).__name__ == "Qwen3ForCausalLM"
    assert text.config.num_hidden_layers >= 28  # the (9, 18, 27) hidden-state taps exist
    assert transformer.config.joint_attention_dim == 3 * text.config.hidden_size
    assert transformer.config.in_channels == 4 * vae.config.latent_channels
    assert len(vae.config.block_out_channels) == 4
    assert not tiny_pipe.config.is_distilled
    assert type(tiny_pipe.tokenizer).__name__.startswith("Qwen2Tokenizer")  # Fast is an alias in v5


def test_chat_template_renders_like_qwen3(tiny_pipe: Any) -> None:
    text = tiny_pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_same_seed_same_weights_and_global_rng_untouched(tiny_pipe: Any) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    again = build_tiny_pipeline(seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    for name in ("text_encoder", "transformer", "vae"):
        ours = getattr(again, name).state_dict()
        theirs = getattr(tiny_pipe, name).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    other = build_tiny_pipeline(seed=1)
    first_key = next(iter(other.transformer.state_dict()))
    assert not torch.equal(
        other.transformer.state_dict()[first_key], tiny_pipe.transformer.state_dict()[first_key]
    )

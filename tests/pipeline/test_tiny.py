"""The tiny pipeline keeps the structural couplings of FLUX.2 [klein] base and is seed-deterministic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.config import PipelineSettings
from pipeline.loader import load_pipeline
from pipeline.tiny import build_tiny_pipeline, ensure_tiny_model


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


# --- the directory writer: the only test that builds the tiny pipeline in-process -----------------------


def test_fetch_model_tiny_random_writes_a_directory_the_loader_takes(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "tiny"
    klein_edit = str(Path(sys.executable).with_name("klein-edit"))
    done = subprocess.run(
        [klein_edit, "fetch-model", "--tiny-random", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert (target / "model_index.json").is_file()
    pipe, name = load_pipeline(PipelineSettings(model=str(target), device="cpu"))
    assert name == str(target)
    built = build_tiny_pipeline(seed=0)
    for component in ("text_encoder", "transformer", "vae"):
        ours = getattr(pipe, component).state_dict()
        theirs = getattr(built, component).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), component


def test_concurrent_first_use_gives_one_complete_directory(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_model(tmp_path), range(2)))
    assert paths[0] == paths[1]
    assert (paths[0] / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no scratch directory left behind

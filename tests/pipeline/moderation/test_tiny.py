"""The tiny classifiers' directories: written once, keyed by what makes their files, seed-deterministic."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.moderation.tiny import (
    FLAGGING_BIAS,
    build_tiny_image_classifier,
    ensure_tiny_image_classifier,
    ensure_tiny_text_classifier,
)


def test_written_once_as_a_model_directory(tmp_path: Path) -> None:
    first = ensure_tiny_image_classifier(tmp_path)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in first.iterdir()
    }
    written = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_image_classifier(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch directory left
    text = ensure_tiny_text_classifier(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in text.iterdir()}


def test_the_bias_is_part_of_the_key(tmp_path: Path) -> None:
    plain = ensure_tiny_image_classifier(tmp_path)
    biased = ensure_tiny_image_classifier(tmp_path, label_bias=FLAGGING_BIAS)
    assert plain != biased


def test_same_seed_same_weights_and_the_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    model, _processor = build_tiny_image_classifier()
    assert torch.equal(torch.rand(1), expected_next)
    again, _ = build_tiny_image_classifier()
    biased, _ = build_tiny_image_classifier(label_bias=FLAGGING_BIAS)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    nsfw = model.config.label2id["nsfw"]
    assert biased.classifier.bias[nsfw] == model.classifier.bias[nsfw] + FLAGGING_BIAS
    assert torch.equal(biased.classifier.bias[1 - nsfw], model.classifier.bias[1 - nsfw])

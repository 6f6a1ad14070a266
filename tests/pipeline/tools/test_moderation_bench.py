"""The moderation benchmark: its model is ViT-B/16, and the harness runs on the tiny classifier."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import constants

from pipeline.moderation import ImageModerator, ModerationSettings
from pipeline.moderation.tiny import ensure_tiny_image_classifier
from pipeline.tools.moderation_bench import benchmark, vit_b16_config


def test_the_benchmarked_model_is_vit_b16_at_224_px() -> None:
    from transformers import ViTForImageClassification

    config = vit_b16_config()
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (
        224,
        16,
        768,
        12,
    )
    with torch.device("meta"):
        model = ViTForImageClassification(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 85e6 < parameters < 87e6  # "86M parameters"


def test_the_harness_reports_ms_per_image() -> None:
    directory: Path = ensure_tiny_image_classifier(constants.HF_HUB_CACHE)
    moderator = ImageModerator.load(ModerationSettings(model=str(directory)), device=torch.device("cpu"))
    results = benchmark(moderator, batch_sizes=[1, 2], image_sizes=[32], repeats=2)
    assert [(r["input_size"], r["batch"]) for r in results] == [(32, 1), (32, 2)]
    assert all(0 < r["ms_per_image_min"] <= r["ms_per_image_median"] for r in results)

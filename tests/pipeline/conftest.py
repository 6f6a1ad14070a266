"""Shared fixtures for the pipeline tests: the tiny random-weight model, loaded as production loads a model.

The tiny model is a real model directory (written once by `pipeline.tiny.ensure_tiny_model`) and every
test gets it through `load_pipeline`, the code a GPU node runs; only tests/pipeline/test_tiny.py builds
it in-process, to test the directory writer itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.loader import load_pipeline, locate_model

ImageFactory = Callable[..., Image.Image]


def synthetic_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A gradient plus noise: cheap, deterministic, and not flat (so encoders have something to do)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), np.full(xx.shape, 0.5)], axis=-1)
    pixels = np.clip(base + rng.uniform(0, 0.2, size=(height, width, 3)), 0, 1)
    return Image.fromarray((pixels * 255).astype(np.uint8), "RGB")


@pytest.fixture
def make_image() -> ImageFactory:
    return synthetic_image


@pytest.fixture(scope="session")
def saved_tiny_dir() -> Path:
    """The tiny model's directory (save_pretrained layout), where `tiny-random` resolves to."""
    return locate_model(PipelineSettings(model=TINY_RANDOM))


@pytest.fixture(scope="session")
def tiny_pipe(saved_tiny_dir: Path) -> Any:
    """Loaded once through `load_pipeline` from the directory, on the CPU; tests must not mutate it."""
    pipe, _name = load_pipeline(PipelineSettings(model=str(saved_tiny_dir), device="cpu"))
    return pipe

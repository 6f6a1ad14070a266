"""Shared fixtures for the pipeline tests: one tiny random-weight pipeline per session, and images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.tiny import build_tiny_pipeline

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
def tiny_pipe() -> Any:
    """Built once (about 3 s); tests must not mutate it."""
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def saved_tiny_dir(tiny_pipe: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny pipeline written with save_pretrained, as a stand-in for a downloaded model."""
    directory = tmp_path_factory.mktemp("tiny-saved")
    tiny_pipe.save_pretrained(str(directory))
    return directory

"""The tiny random-weight classifiers, written once as model directories under the Hugging Face cache
(as `tiny-random` is) and loaded through `pipeline.moderation.loading`, the path a GPU node takes.

The verdict of the tiny image classifier is set by its weights: `label_bias` on the `nsfw` logit's bias
(+8: every image scores above 0.999; -8: below 0.001; 0: about 0.45)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from pipeline.moderation.tiny import FLAGGING_BIAS, ensure_tiny_image_classifier, ensure_tiny_text_classifier

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_image_dir() -> Path:
    """Where `tiny-random-nsfw` resolves to (bias 0)."""
    return ensure_tiny_image_classifier(constants.HF_HUB_CACHE)


@pytest.fixture(scope="session")
def flagging_image_dir() -> Path:
    return ensure_tiny_image_classifier(constants.HF_HUB_CACHE, label_bias=FLAGGING_BIAS)


@pytest.fixture(scope="session")
def passing_image_dir() -> Path:
    return ensure_tiny_image_classifier(constants.HF_HUB_CACHE, label_bias=-FLAGGING_BIAS)


@pytest.fixture(scope="session")
def flagging_text_dir() -> Path:
    return ensure_tiny_text_classifier(constants.HF_HUB_CACHE, label_bias=FLAGGING_BIAS)


@pytest.fixture(scope="session")
def passing_text_dir() -> Path:
    return ensure_tiny_text_classifier(constants.HF_HUB_CACHE, label_bias=-FLAGGING_BIAS)

"""ModerationSettings: the issue's defaults and the combinations refused before anything loads."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from pipeline.moderation import ModerationSettings, classifier_device


def test_defaults() -> None:
    settings = ModerationSettings()
    assert settings.enabled
    assert (settings.model, settings.label, settings.threshold) == (
        "Falconsai/nsfw_image_detection",
        "nsfw",
        0.85,
    )
    assert settings.device == "gpu"
    assert settings.check_inputs
    assert settings.deny_list is None
    assert settings.text_model is None
    assert not settings.allow_request_disable


@pytest.mark.parametrize("threshold", [-0.01, 1.01])
def test_a_threshold_is_a_probability(threshold: float) -> None:
    with pytest.raises(ValidationError):
        ModerationSettings(threshold=threshold)
    with pytest.raises(ValidationError):
        ModerationSettings(text_threshold=threshold)


def test_a_text_model_needs_its_label() -> None:
    with pytest.raises(ValidationError, match="KLEIN_EDIT_MODERATION__TEXT_LABEL"):
        ModerationSettings(text_model="acme/prompt-guard")


def test_classifier_device() -> None:
    cuda = torch.device("cuda")
    assert classifier_device(ModerationSettings(), cuda) == cuda
    assert classifier_device(ModerationSettings(device="cpu"), cuda) == torch.device("cpu")
    assert classifier_device(ModerationSettings(), torch.device("cpu")) == torch.device("cpu")

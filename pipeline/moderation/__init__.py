"""Moderation (issue 21): an image classifier checks every output (and the inputs), and the prompt is
checked against an operator deny-list and, optionally, a text classifier.

One job per module: `settings` (ModerationSettings), `loading` (finding a classifier offline and loading
it through transformers' from_pretrained, one-line `ModelLoadError`s), `image_classifier`
(ImageModerator), `deny_list` (DenyList), `text_classifier` (TextModerator), `prompts` (PromptModerator),
`tiny` (random-weight classifiers of the real classes, written once as model directories for tests).
Verdicts name a rule or a score, never the text they matched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.moderation.deny_list import DenyList, normalise_text
    from pipeline.moderation.image_classifier import ImageModerator, ModerationScore
    from pipeline.moderation.loading import FETCH_PATTERNS
    from pipeline.moderation.prompts import PromptModerator, PromptVerdict
    from pipeline.moderation.settings import (
        DEFAULT_IMAGE_CLASSIFIER,
        TINY_IMAGE_CLASSIFIER,
        TINY_TEXT_CLASSIFIER,
        ModerationSettings,
        classifier_device,
    )
    from pipeline.moderation.text_classifier import TextModerator

# Loaded on first use (PEP 562), so settings and `--help` never import torch or transformers.
_LAZY = {
    "DEFAULT_IMAGE_CLASSIFIER": "pipeline.moderation.settings",
    "DenyList": "pipeline.moderation.deny_list",
    "FETCH_PATTERNS": "pipeline.moderation.loading",
    "ImageModerator": "pipeline.moderation.image_classifier",
    "ModerationScore": "pipeline.moderation.image_classifier",
    "ModerationSettings": "pipeline.moderation.settings",
    "PromptModerator": "pipeline.moderation.prompts",
    "PromptVerdict": "pipeline.moderation.prompts",
    "TINY_IMAGE_CLASSIFIER": "pipeline.moderation.settings",
    "TINY_TEXT_CLASSIFIER": "pipeline.moderation.settings",
    "TextModerator": "pipeline.moderation.text_classifier",
    "classifier_device": "pipeline.moderation.settings",
    "normalise_text": "pipeline.moderation.deny_list",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_IMAGE_CLASSIFIER",
    "FETCH_PATTERNS",
    "TINY_IMAGE_CLASSIFIER",
    "TINY_TEXT_CLASSIFIER",
    "DenyList",
    "ImageModerator",
    "ModerationScore",
    "ModerationSettings",
    "PromptModerator",
    "PromptVerdict",
    "TextModerator",
    "classifier_device",
    "normalise_text",
]

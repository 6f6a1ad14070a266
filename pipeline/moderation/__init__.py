"""Moderation (issue 21): an image classifier checks every output (and the inputs), and the prompt is
checked against an operator deny-list and, optionally, a text classifier.

One job per module: `settings` (ModerationSettings), `loading` (finding a classifier offline and loading
it through transformers' from_pretrained, one-line `ModelLoadError`s), `image_classifier`
(ImageModerator), `deny_list` (DenyList), `text_classifier` (TextModerator), `prompts` (PromptModerator),
`tiny` (random-weight classifiers of the real classes, written once as model directories for tests).
Verdicts name a rule or a score, never the text they matched.
"""

from pipeline.moderation.deny_list import DenyList, normalise_text
from pipeline.moderation.image_classifier import ImageModerator, ModerationScore
from pipeline.moderation.loading import FETCH_PATTERNS
from pipeline.moderation.prompts import PromptModerator, PromptVerdict
from pipeline.moderation.settings import DEFAULT_IMAGE_CLASSIFIER, ModerationSettings, classifier_device
from pipeline.moderation.text_classifier import TextModerator
from pipeline.moderation.tiny import TINY_IMAGE_CLASSIFIER, TINY_TEXT_CLASSIFIER

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

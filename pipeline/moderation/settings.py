"""Moderation settings: which classifiers check images and prompts, and where they run.

Composed into the worker's `Settings` as `moderation` (environment: `KLEIN_EDIT_MODERATION__...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, model_validator

if TYPE_CHECKING:
    import torch

# ViT-B/16 fine-tuned for NSFW detection, Apache-2.0, labels `normal` and `nsfw`.
DEFAULT_IMAGE_CLASSIFIER = "Falconsai/nsfw_image_detection"


# Names of the random-weight classifiers of the real classes (`pipeline.moderation.tiny` writes them).
TINY_IMAGE_CLASSIFIER = "tiny-random-nsfw"
TINY_TEXT_CLASSIFIER = "tiny-random-unsafe-text"


class ModerationSettings(BaseModel):
    enabled: bool = Field(
        default=True,
        description="Check outputs (and, with check_inputs, inputs) with the image classifier, and prompts "
        "with the deny-list and text classifier when set. On and the classifier not installed: the worker "
        "refuses to start (`klein-edit fetch-model --moderation` installs it).",
    )
    model: str = Field(
        default=DEFAULT_IMAGE_CLASSIFIER,
        description="Image classifier: a Hugging Face Hub id (loaded from the local cache), a local "
        "directory written by save_pretrained, or 'tiny-random-nsfw' (an offline random-weight ViT, for "
        "demos and tests). Any transformers image-classification model works.",
    )
    revision: str | None = Field(default=None, description="Hub revision of `model` (default: main).")
    label: str = Field(
        default="nsfw", description="The classifier's label to watch (one of its config's id2label)."
    )
    threshold: float = Field(
        default=0.85,
        ge=0.0,
        le=1.0,
        description="Probability of `label` above which an image is flagged: an output is withheld, an "
        "input refused.",
    )
    device: Literal["gpu", "cpu"] = Field(
        default="gpu",
        description="gpu: the edit pipeline's device, on the GPU thread right after decode; cpu: the CPU.",
    )
    check_inputs: bool = Field(
        default=True, description="Also classify the base image and every reference before the edit."
    )
    deny_list: Path | None = Field(
        default=None,
        description="File of prompt patterns, one per line (`#` comments; `re:` for a regular expression), "
        "matched as whole words on Unicode-normalised, case-folded text (pipeline/moderation/deny_list.py).",
    )
    text_model: str | None = Field(
        default=None,
        description="Optional prompt classifier: a transformers text-classification model (Hub id from the "
        "cache or local directory; 'tiny-random-unsafe-text' for tests). Needs text_label.",
    )
    text_revision: str | None = Field(default=None, description="Hub revision of `text_model`.")
    text_label: str | None = Field(default=None, description="The text classifier's label to watch.")
    text_threshold: float = Field(
        default=0.85,
        ge=0.0,
        le=1.0,
        description="Probability of `text_label` above which a prompt is flagged.",
    )
    allow_request_disable: bool = Field(
        default=False,
        description="Whether a request may turn moderation off for itself (trusted producers only).",
    )

    @model_validator(mode="after")
    def _text_model_names_its_label(self) -> ModerationSettings:
        if self.text_model is not None and not self.text_label:
            raise ValueError(
                "text_model needs text_label: the label of the text classifier to watch "
                "(KLEIN_EDIT_MODERATION__TEXT_LABEL)"
            )
        return self


def classifier_device(settings: ModerationSettings, pipeline_device: torch.device) -> torch.device:
    """Where the classifiers run: the edit pipeline's device (`gpu`, which is the CPU for a CPU
    pipeline), or the CPU."""
    import torch

    return torch.device("cpu") if settings.device == "cpu" else pipeline_device

"""The image check: one transformers image classifier scores every input and output of an edit.

`ImageModerator.score` gives each image the probability of the watched label (softmax over the labels,
or the label's sigmoid for a multi-label model); `ImageModerator.check` compares it with the threshold.
At the default Falconsai/nsfw_image_detection (ViT-B/16 at 224 px) an image costs a few milliseconds on
a GPU; `pipeline/tools/moderation_bench.py` measures it on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog
import torch
from PIL import Image

from pipeline.moderation.loading import IMAGE_ROLE, LoadedClassifier, label_probabilities, load_classifier
from pipeline.moderation.settings import ModerationSettings

log = structlog.get_logger(__name__)

# Images per forward pass: an edit's base image, four references and its output fit in one or two.
BATCH_SIZE = 8


@dataclass(frozen=True, slots=True)
class ModerationScore:
    """One image's verdict: `part` names it ("base", "reference 1", "output"), `score` is the watched
    label's probability in [0, 1], `flagged` is score > threshold."""

    part: str
    score: float
    flagged: bool


class ImageModerator:
    """A loaded image classifier with its watched label and threshold; not thread-safe (one GPU thread)."""

    def __init__(self, classifier: LoadedClassifier, *, label: str, threshold: float, device: torch.device):
        self._classifier = classifier
        self.label = label
        self.threshold = threshold
        self.device = device

    @classmethod
    def load(
        cls, settings: ModerationSettings, *, device: torch.device, cache_dir: str | None = None
    ) -> ImageModerator:
        """Load `settings.model` (a Hub id from the cache at `cache_dir`, a directory or a tiny name) on
        `device`, in float32. Raises `ModelLoadError` (one line) when it is not installed, is not an
        image-classification model with safetensors weights, or has no label `settings.label`."""
        classifier = load_classifier(
            settings.model,
            revision=settings.revision,
            label=settings.label,
            kind="ImageClassification",
            cache_dir=cache_dir,
            device=device,
            role=IMAGE_ROLE,
        )
        log.info(
            "moderation.classifier_loaded",
            model=classifier.model_id,
            revision=classifier.revision,
            label=settings.label,
            threshold=settings.threshold,
            device=str(device),
        )
        return cls(classifier, label=settings.label, threshold=settings.threshold, device=device)

    @property
    def model_id(self) -> str:
        return self._classifier.model_id

    @property
    def revision(self) -> str | None:
        """The Hub commit of a cached snapshot, else None (a local directory or a tiny classifier)."""
        return self._classifier.revision

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> list[float]:
        """The watched label's probability for each image, in order, each in [0, 1].

        Any size and mode: the model's image processor resizes (224x224 for ViT-B/16) and the image is
        converted to RGB first. Runs in batches of `BATCH_SIZE` on the moderator's device.
        """
        scores: list[float] = []
        for start in range(0, len(images), BATCH_SIZE):
            batch = [
                image if image.mode == "RGB" else image.convert("RGB")
                for image in images[start : start + BATCH_SIZE]
            ]
            inputs = self._classifier.preprocessor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, torch.float32)
            logits = self._classifier.model(pixel_values=pixels).logits
            scores.extend(label_probabilities(logits, self._classifier))
        return scores

    def check(self, images: Mapping[str, Image.Image]) -> list[ModerationScore]:
        """A verdict per named image ({"base": ..., "reference 1": ...}), in the mapping's order."""
        scores = self.score(list(images.values()))
        return [
            ModerationScore(part=part, score=score, flagged=score > self.threshold)
            for part, score in zip(images, scores, strict=True)
        ]

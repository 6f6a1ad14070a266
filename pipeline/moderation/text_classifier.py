"""The optional prompt classifier: a transformers text-classification model named by a setting.

It scores the prompt as the editor receives it (free text or a compiled recolour) with the watched
label's probability (softmax over the labels, or the label's sigmoid for a multi-label model such as a
toxicity classifier). Prompts longer than the model's input are truncated to it.
"""

from __future__ import annotations

import structlog
import torch

from pipeline.moderation.loading import TEXT_ROLE, LoadedClassifier, label_probabilities, load_classifier

log = structlog.get_logger(__name__)

# BERT-sized classifiers take 512 tokens; a tokenizer without a limit says ~1e30.
_MAX_TOKENS = 512


class TextModerator:
    """A loaded text classifier with its watched label and threshold; not thread-safe."""

    def __init__(self, classifier: LoadedClassifier, *, label: str, threshold: float, device: torch.device):
        self._classifier = classifier
        self.label = label
        self.threshold = threshold
        self.device = device

    @classmethod
    def load(
        cls,
        model: str,
        *,
        revision: str | None,
        label: str,
        threshold: float,
        device: torch.device,
        cache_dir: str | None = None,
    ) -> TextModerator:
        """Load `model` (Hub id from the cache, directory, or 'tiny-random-unsafe-text') in float32 on
        `device`; raises `ModelLoadError` (one line) as `ImageModerator.load` does."""
        classifier = load_classifier(
            model,
            revision=revision,
            label=label,
            kind="SequenceClassification",
            cache_dir=cache_dir,
            device=device,
            role=TEXT_ROLE,
        )
        log.info(
            "moderation.text_classifier_loaded",
            model=classifier.model_id,
            revision=classifier.revision,
            label=label,
            threshold=threshold,
            device=str(device),
        )
        return cls(classifier, label=label, threshold=threshold, device=device)

    @property
    def model_id(self) -> str:
        return self._classifier.model_id

    @property
    def revision(self) -> str | None:
        return self._classifier.revision

    @torch.inference_mode()
    def score(self, text: str) -> float:
        """The watched label's probability for `text`, in [0, 1]."""
        tokenizer = self._classifier.preprocessor
        limit = min(int(tokenizer.model_max_length), _MAX_TOKENS)
        inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        logits = self._classifier.model(**inputs).logits
        return label_probabilities(logits, self._classifier)[0]

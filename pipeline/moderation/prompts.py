"""The prompt check: the operator's deny-list first (microseconds), then the optional text classifier.

A verdict names the rule that flagged the prompt ("deny-list line 12", "text classifier") and the
classifier's score, never the text that matched, so logs and events can carry it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.moderation.deny_list import DenyList
from pipeline.moderation.settings import ModerationSettings
from pipeline.moderation.text_classifier import TextModerator

TEXT_CLASSIFIER_RULE = "text classifier"


@dataclass(frozen=True, slots=True)
class PromptVerdict:
    """`rule` names what flagged the prompt (None when nothing did); `score` is the text classifier's
    probability of its label, None when it did not run (none configured, or the deny-list decided)."""

    flagged: bool
    rule: str | None = None
    score: float | None = None


class PromptModerator:
    def __init__(self, deny_list: DenyList | None, text: TextModerator | None) -> None:
        self.deny_list = deny_list
        self.text = text

    @classmethod
    def load(
        cls, settings: ModerationSettings, *, device: torch.device, cache_dir: str | None = None
    ) -> PromptModerator:
        """The deny-list file and the text classifier the settings name (either may be absent); raises
        `ModelLoadError` (one line) for a missing or bad deny-list or a classifier that cannot load."""
        deny_list = DenyList.from_file(settings.deny_list) if settings.deny_list is not None else None
        text = None
        if settings.text_model is not None:
            assert settings.text_label is not None  # ModerationSettings requires it with text_model
            text = TextModerator.load(
                settings.text_model,
                revision=settings.text_revision,
                label=settings.text_label,
                threshold=settings.text_threshold,
                device=device,
                cache_dir=cache_dir,
            )
        return cls(deny_list, text)

    @property
    def active(self) -> bool:
        """Whether any check is configured (otherwise `check` always passes)."""
        return self.deny_list is not None or self.text is not None

    def check(self, prompt: str) -> PromptVerdict:
        if self.deny_list is not None:
            rule = self.deny_list.match(prompt)
            if rule is not None:
                return PromptVerdict(flagged=True, rule=rule)
        if self.text is None:
            return PromptVerdict(flagged=False)
        score = self.text.score(prompt)
        flagged = score > self.text.threshold
        return PromptVerdict(flagged=flagged, rule=TEXT_CLASSIFIER_RULE if flagged else None, score=score)

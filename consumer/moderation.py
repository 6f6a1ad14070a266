"""Moderation in the record path: the operator's classifiers, loaded with the editor, and the rules that
turn their verdicts into outcomes.

`Moderation.load` runs on the GPU thread at start-up (a missing or misconfigured classifier stops the
worker with one line, `ModelLoadError`). The stages call `check_prompt` (stage 1), `check_inputs` (after
decode, before any edit work) and `check_output` (after the edit, before the upload); a flagged prompt
or input raises `InputModerated`, a flagged output `OutputModerated`. Events and logs name the part and
the score, or the rule: never the matched text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from consumer.policy import InputModerated, OutputModerated, RequestRejected
from pipeline.moderation import ImageModerator, ModerationSettings, PromptModerator, classifier_device
from schemas.requests import EditRequest
from schemas.results import ModerationReport, ModerationScore


@dataclass(frozen=True)
class RequestModeration:
    """The rules for one request: the operator's, made stricter by the request where it asks."""

    enabled: bool
    threshold: float


class Moderation:
    """The loaded classifiers. `images.threshold` is the operator's threshold; `on_gpu` says whether the
    image classifier runs on the GPU thread (else on an I/O thread, on the CPU)."""

    def __init__(
        self, settings: ModerationSettings, images: ImageModerator, prompts: PromptModerator
    ) -> None:
        self.settings = settings
        self.images = images
        self.prompts = prompts

    @classmethod
    def load(cls, settings: ModerationSettings, *, pipeline_device: str, cache_dir: str | None) -> Moderation:
        """Blocking (run it on the GPU thread). Raises `ModelLoadError` with one line."""
        import torch

        base = torch.device("cuda" if pipeline_device != "cpu" and torch.cuda.is_available() else "cpu")
        device = classifier_device(settings, base)
        images = ImageModerator.load(settings, device=device, cache_dir=cache_dir)
        prompts = PromptModerator.load(settings, device=device, cache_dir=cache_dir)
        return cls(settings, images, prompts)

    @property
    def on_gpu(self) -> bool:
        return self.images.device.type == "cuda"

    def for_request(self, request: EditRequest, *, allow_disable: bool) -> RequestModeration:
        """The request's rules; `RequestRejected` (INVALID_EVENT) for a looser threshold, or for turning
        moderation off where the operator does not allow it."""
        operator = self.settings.threshold
        asked = request.moderation
        if asked is None:
            return RequestModeration(enabled=True, threshold=operator)
        if asked.enabled is False:
            if not allow_disable:
                raise RequestRejected(
                    "moderation.enabled: false is not allowed on this worker "
                    "(KLEIN_EDIT_MODERATION__ALLOW_REQUEST_DISABLE)"
                )
            return RequestModeration(enabled=False, threshold=operator)
        if asked.threshold is not None and asked.threshold > operator:
            raise RequestRejected(
                f"moderation.threshold: {asked.threshold:g} is looser than this worker's {operator:g}; "
                "a request may only lower it"
            )
        return RequestModeration(
            enabled=True, threshold=asked.threshold if asked.threshold is not None else operator
        )

    def report(self, rules: RequestModeration) -> ModerationReport:
        return ModerationReport(
            model=self.images.model_id,
            revision=self.images.revision,
            label=self.images.label,
            threshold=rules.threshold,
        )

    def check_prompt(self, prompt: str, report: ModerationReport) -> ModerationReport:
        """Blocking. Raises `InputModerated` naming the rule (never the text)."""
        verdict = self.prompts.check(prompt)
        if verdict.flagged:
            rule = verdict.rule or "a rule"
            raise InputModerated(
                f"prompt: flagged by {rule}", report=report.model_copy(update={"prompt_rule": rule})
            )
        return report

    def check_inputs(self, images: Mapping[str, Image.Image], report: ModerationReport) -> ModerationReport:
        """Blocking, on the classifier's thread. Raises `InputModerated` naming the first flagged part."""
        scores = [
            ModerationScore(part=part, score=round(score, 6), flagged=score > report.threshold)
            for part, score in zip(images, self.images.score(list(images.values())), strict=True)
        ]
        report = report.model_copy(update={"inputs": scores})
        flagged = [s for s in scores if s.flagged]
        if flagged:
            first = flagged[0]
            raise InputModerated(
                f"{first.part}: moderation score {first.score:.3f} over the threshold {report.threshold:g}",
                report=report,
            )
        return report

    def check_outputs(self, images: Mapping[int, Image.Image], report: ModerationReport) -> ModerationReport:
        """Blocking, on the classifier's thread: a score per image (`outputs[i]`); the flagged ones are to be
        withheld and the others delivered. Raises `OutputModerated` when every image is flagged."""
        scores = [
            ModerationScore(part=f"outputs[{index}]", score=round(score, 6), flagged=score > report.threshold)
            for index, score in zip(images, self.images.score(list(images.values())), strict=True)
        ]
        report = report.model_copy(update={"outputs": scores, "output": scores[0] if scores else None})
        if scores and all(s.flagged for s in scores):
            raise OutputModerated(
                f"outputs: all {len(scores)} images scored over the threshold {report.threshold:g}; withheld",
                report=report,
            )
        return report

    def check_output(self, image: Image.Image, report: ModerationReport) -> ModerationReport:
        """Blocking, on the classifier's thread. Raises `OutputModerated`: the output is withheld."""
        (score,) = self.images.score([image])
        verdict = ModerationScore(part="output", score=round(score, 6), flagged=score > report.threshold)
        report = report.model_copy(update={"output": verdict})
        if verdict.flagged:
            raise OutputModerated(
                f"output: moderation score {verdict.score:.3f} over the threshold {report.threshold:g}; "
                "withheld",
                report=report,
            )
        return report

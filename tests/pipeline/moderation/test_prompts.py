"""PromptModerator: the deny-list first, then the tiny random text classifier, whose verdict its weights
decide (a bias on the `unsafe` logit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ModelLoadError
from pipeline.moderation import TINY_TEXT_CLASSIFIER, ModerationSettings, PromptModerator, PromptVerdict
from pipeline.moderation.prompts import TEXT_CLASSIFIER_RULE
from tests.pipeline.moderation.conftest import CPU

PROMPT = "make the sky purple and add a moon"


def prompts(**settings: object) -> PromptModerator:
    return PromptModerator.load(ModerationSettings(**settings), device=CPU)  # type: ignore[arg-type]


def test_nothing_configured_passes_every_prompt() -> None:
    moderator = prompts()
    assert not moderator.active
    assert moderator.check(PROMPT) == PromptVerdict(flagged=False)


def test_the_tiny_text_classifier_loads_by_name_and_scores_in_0_1() -> None:
    moderator = prompts(text_model=TINY_TEXT_CLASSIFIER, text_label="unsafe")
    assert moderator.active
    assert moderator.text is not None
    assert type(moderator.text._classifier.model).__name__ == "BertForSequenceClassification"
    verdict = moderator.check(PROMPT)
    assert verdict.score is not None
    assert 0.3 < verdict.score < 0.7
    assert verdict == PromptVerdict(flagged=False, rule=None, score=verdict.score)
    assert moderator.check(PROMPT) == verdict
    below = prompts(
        text_model=TINY_TEXT_CLASSIFIER, text_label="unsafe", text_threshold=verdict.score - 0.001
    )
    assert below.check(PROMPT) == PromptVerdict(flagged=True, rule=TEXT_CLASSIFIER_RULE, score=verdict.score)


def test_the_label_bias_in_the_weights_decides_the_verdict(
    flagging_text_dir: Path, passing_text_dir: Path
) -> None:
    flagged = prompts(text_model=str(flagging_text_dir), text_label="unsafe").check(PROMPT)
    assert flagged.flagged
    assert flagged.rule == TEXT_CLASSIFIER_RULE
    assert flagged.score is not None
    assert flagged.score > 0.999
    passed = prompts(text_model=str(passing_text_dir), text_label="unsafe", text_threshold=0.01).check(PROMPT)
    assert not passed.flagged
    assert passed.score is not None
    assert passed.score < 0.001


def test_a_long_prompt_is_truncated_to_the_model_input(flagging_text_dir: Path) -> None:
    verdict = prompts(text_model=str(flagging_text_dir), text_label="unsafe").check(PROMPT * 200)
    assert verdict.flagged


def test_the_deny_list_decides_first_and_the_verdict_never_holds_the_text(
    tmp_path: Path, passing_text_dir: Path
) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("# words\npurple\n", encoding="utf-8")
    moderator = prompts(deny_list=deny, text_model=str(passing_text_dir), text_label="unsafe")
    verdict = moderator.check(PROMPT)
    assert verdict == PromptVerdict(flagged=True, rule="deny-list line 2", score=None)
    assert "purple" not in repr(verdict)
    assert moderator.check("make the sky green").flagged is False


def test_a_text_label_the_model_lacks_lists_its_labels() -> None:
    with pytest.raises(ModelLoadError) as caught:
        prompts(text_model=TINY_TEXT_CLASSIFIER, text_label="toxic")
    message = str(caught.value)
    assert "\n" not in message
    assert "moderation text classifier tiny-random-unsafe-text" in message
    assert "its labels are 'safe', 'unsafe'" in message
    assert "KLEIN_EDIT_MODERATION__TEXT_LABEL" in message


def test_a_text_classifier_not_in_the_cache_names_fetch_model_and_how_to_turn_it_off(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        PromptModerator.load(
            ModerationSettings(text_model="acme/prompt-guard", text_label="unsafe"),
            device=CPU,
            cache_dir=str(tmp_path),
        )
    message = str(caught.value)
    assert "moderation text classifier acme/prompt-guard is not installed" in message
    assert "fetch-model --moderation" in message
    assert "unset KLEIN_EDIT_MODERATION__TEXT_MODEL" in message

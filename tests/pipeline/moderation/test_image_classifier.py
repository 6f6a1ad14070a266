"""ImageModerator on the production path: a tiny random ViT classifier loaded from a model directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.errors import ModelLoadError
from pipeline.moderation import TINY_IMAGE_CLASSIFIER, ImageModerator, ModerationScore, ModerationSettings
from pipeline.moderation.image_classifier import BATCH_SIZE
from pipeline.moderation.tiny import TINY_TEXT_CLASSIFIER
from tests.pipeline.conftest import ImageFactory
from tests.pipeline.moderation.conftest import CPU

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def load(model: str | Path, cache_dir: str | Path | None = None, **settings: object) -> ImageModerator:
    return ImageModerator.load(
        ModerationSettings(model=str(model), **settings),  # type: ignore[arg-type]
        device=CPU,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )


def load_error(model: str | Path, cache_dir: str | Path | None = None, **settings: object) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load(model, cache_dir, **settings)
    message = str(caught.value)
    assert "\n" not in message
    return message


def fake_hub_snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    """A Hugging Face cache entry for `repo_id` at `COMMIT` holding a copy of `source` (refs/main too)."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_loads_by_name_and_from_its_directory_with_the_same_scores(
    tiny_image_dir: Path, make_image: ImageFactory
) -> None:
    images = [make_image(64, 48, seed) for seed in range(3)]
    by_name = load(TINY_IMAGE_CLASSIFIER)
    by_directory = load(tiny_image_dir)
    scores = by_name.score(images)
    assert scores == by_directory.score(images)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert by_name.model_id == TINY_IMAGE_CLASSIFIER
    assert by_name.revision is None
    assert by_directory.revision is None
    assert type(by_name._classifier.model).__name__ == "ViTForImageClassification"


def test_scores_are_deterministic_and_a_batch_scores_as_its_images_alone(make_image: ImageFactory) -> None:
    moderator = load(TINY_IMAGE_CLASSIFIER)
    images = [make_image(40 + seed, 32, seed) for seed in range(BATCH_SIZE + 2)]  # two batches
    scores = moderator.score(images)
    assert scores == moderator.score(images)
    alone = [moderator.score([image])[0] for image in images]
    assert scores == pytest.approx(alone, abs=1e-5)
    assert len(set(scores)) > 1  # the random classifier still looks at the pixels


def test_any_mode_is_scored_as_rgb(make_image: ImageFactory) -> None:
    moderator = load(TINY_IMAGE_CLASSIFIER)
    image = make_image(32, 32)
    [rgb, rgba, grey] = moderator.score([image, image.convert("RGBA"), image.convert("L")])
    assert rgba == pytest.approx(rgb, abs=1e-6)
    assert grey == pytest.approx(moderator.score([image.convert("L").convert("RGB")])[0], abs=1e-6)


def test_the_label_bias_in_the_weights_decides_the_verdict(
    flagging_image_dir: Path, passing_image_dir: Path, make_image: ImageFactory
) -> None:
    images = {
        "base": make_image(64, 64, 1),
        "reference 1": make_image(48, 80, 2),
        "output": make_image(64, 64),
    }
    flagged = load(flagging_image_dir).check(images)
    assert [verdict.part for verdict in flagged] == ["base", "reference 1", "output"]
    assert all(verdict.flagged and verdict.score > 0.999 for verdict in flagged)
    passed = load(passing_image_dir, threshold=0.01).check(images)
    assert all(not verdict.flagged and verdict.score < 0.001 for verdict in passed)


def test_the_threshold_against_the_known_score_decides_the_verdict(make_image: ImageFactory) -> None:
    image = make_image(64, 64)
    [score] = load(TINY_IMAGE_CLASSIFIER).score([image])
    assert 0.3 < score < 0.6  # bias 0: the random head is near even, under the 0.85 default
    assert load(TINY_IMAGE_CLASSIFIER).check({"output": image}) == [
        ModerationScore("output", score, flagged=False)
    ]
    below = load(TINY_IMAGE_CLASSIFIER, threshold=score - 0.001).check({"output": image})
    above = load(TINY_IMAGE_CLASSIFIER, threshold=score + 0.001).check({"output": image})
    assert below[0].flagged
    assert not above[0].flagged


def test_a_hub_id_loads_from_the_cache_and_reports_its_commit(
    tmp_path: Path, tiny_image_dir: Path, make_image: ImageFactory
) -> None:
    fake_hub_snapshot(tmp_path, "acme/nsfw-detector", tiny_image_dir)
    moderator = load("acme/nsfw-detector", tmp_path)
    assert moderator.revision == COMMIT
    assert moderator.model_id == "acme/nsfw-detector"
    image = make_image(32, 32)
    assert moderator.score([image]) == load(tiny_image_dir).score([image])
    assert load("acme/nsfw-detector", tmp_path, revision=COMMIT).revision == COMMIT


def test_a_classifier_not_in_the_cache_names_fetch_model(tmp_path: Path) -> None:
    message = load_error("Falconsai/nsfw_image_detection", tmp_path)
    assert message.startswith("moderation classifier Falconsai/nsfw_image_detection is not installed")
    assert "`klein-edit fetch-model --moderation`" in message
    assert "KLEIN_EDIT_MODERATION__ENABLED=false" in message


def test_a_missing_directory_is_one_line_naming_the_setting_and_fetch_model(tmp_path: Path) -> None:
    message = load_error(tmp_path / "classifier")
    assert f"directory {tmp_path / 'classifier'} does not exist" in message
    assert "KLEIN_EDIT_MODERATION__MODEL" in message
    assert "fetch-model --moderation" in message


def test_a_label_the_model_lacks_lists_the_labels_it_has() -> None:
    message = load_error(TINY_IMAGE_CLASSIFIER, label="NSFW")
    assert "has no label 'NSFW'; its labels are 'normal', 'nsfw'" in message
    assert "KLEIN_EDIT_MODERATION__LABEL" in message


def test_a_model_without_its_classification_head_is_refused(tmp_path: Path, tiny_image_dir: Path) -> None:
    """transformers would initialise the missing head at random and score noise."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    ViTModel(config).save_pretrained(tmp_path)
    shutil.copy(tiny_image_dir / "preprocessor_config.json", tmp_path)
    message = load_error(tmp_path)
    assert "classifier.bias" in message
    assert "not a fine-tuned classifier" in message


def test_pickled_weights_are_refused(tmp_path: Path, tiny_image_dir: Path) -> None:
    shutil.copytree(tiny_image_dir, tmp_path / "classifier")
    weights = tmp_path / "classifier" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), tmp_path / "classifier" / "pytorch_model.bin")
    weights.unlink()
    message = load_error(tmp_path / "classifier")
    assert "with safetensors weights" in message


def test_a_text_classifier_is_not_an_image_classifier() -> None:
    message = load_error(TINY_TEXT_CLASSIFIER)
    assert "cannot be loaded as a transformers ImageClassification model" in message


def test_an_image_of_any_size_is_resized_by_the_processor() -> None:
    moderator = load(TINY_IMAGE_CLASSIFIER)
    [score] = moderator.score([Image.new("RGB", (1500, 7), (200, 30, 30))])
    assert 0.0 <= score <= 1.0

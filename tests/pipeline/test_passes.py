"""Transformer passes per edit, the guidance interval and the step cache, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.errors import ModelLoadError
from pipeline.passes import PassGate
from tests.pipeline.conftest import synthetic_image

STEPS = 8


def job(**overrides: object) -> EditJob:
    fields: dict[str, object] = {
        "images": [synthetic_image(64, 64, 0), synthetic_image(64, 64, 1)],
        "prompt": "make the sky purple",
        "num_inference_steps": STEPS,
        "guidance_scale": 4.0,
        "seed": 3,
        "width": 64,
        "height": 64,
    }
    fields.update(overrides)
    return EditJob(**fields)  # type: ignore[arg-type]


def load(saved_tiny_dir: Path, **settings: object) -> KleinEditor:
    return KleinEditor.load(PipelineSettings(model=str(saved_tiny_dir), device="cpu", **settings))  # type: ignore[arg-type]


def pixels(editor: KleinEditor, **overrides: object) -> tuple[np.ndarray, int | None]:
    output = editor.edit(job(**overrides))
    return np.asarray(output.image, dtype=np.int16), output.transformer_passes


def test_every_pass_is_counted_by_default(saved_tiny_dir: Path) -> None:
    editor = load(saved_tiny_dir)
    assert pixels(editor)[1] == 2 * STEPS  # conditional + unconditional per step
    assert pixels(editor, guidance_scale=1.0)[1] == STEPS


def test_the_guidance_interval_runs_the_unconditional_pass_only_inside_it(saved_tiny_dir: Path) -> None:
    full, _ = pixels(load(saved_tiny_dir))
    editor = load(saved_tiny_dir, guidance_interval=(0.25, 0.75))
    image, passes = pixels(editor)
    assert passes == STEPS + 4  # steps 2..5 of 8 run the unconditional pass
    assert np.abs(image - full).mean() > 0


def test_outside_the_interval_a_step_is_the_conditional_prediction_alone(saved_tiny_dir: Path) -> None:
    never = load(saved_tiny_dir, guidance_interval=(0.99, 1.0))
    image, passes = pixels(never)
    assert passes == STEPS
    # Guidance weight 1 on every step is the pipeline without guidance: the same bytes.
    unguided, _ = pixels(load(saved_tiny_dir), guidance_scale=1.0)
    assert np.array_equal(image, unguided)


def test_expected_passes_follow_the_interval() -> None:
    import torch

    gate = PassGate(torch.nn.Identity(), (0.1, 0.9))
    assert gate.expected_passes(50, guided=True) == 50 + 40
    assert gate.expected_passes(50, guided=False) == 50


def test_the_step_cache_skips_passes_and_stays_deterministic(saved_tiny_dir: Path) -> None:
    # Random weights change a lot between steps: a high threshold makes DBCache skip anyway.
    editor = load(
        saved_tiny_dir,
        step_cache="dbcache",
        step_cache_threshold=10.0,
        step_cache_front_blocks=1,
        step_cache_warmup_steps=2,
    )
    first, passes = pixels(editor)
    assert passes is not None
    assert passes < 2 * STEPS
    again, passes_again = pixels(editor)
    assert np.array_equal(first, again)
    assert passes_again == passes


def test_step_cache_and_guidance_interval_together_are_refused(saved_tiny_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="parity of transformer calls"):
        load(saved_tiny_dir, step_cache="dbcache", guidance_interval=(0.1, 0.9))


def test_the_interval_must_lie_within_the_schedule() -> None:
    with pytest.raises(ValidationError, match="0 <= start < end <= 1"):
        PipelineSettings(guidance_interval=(0.5, 0.5))
    with pytest.raises(ValidationError, match="0 <= start < end <= 1"):
        PipelineSettings(guidance_interval=(-0.1, 0.5))

"""StandInEditor: timing, steps, cancellation, deterministic images and duty-cycle accounting."""

from __future__ import annotations

import time
from typing import Any

import pytest
from PIL import Image

from pipeline.editor import EditJob, Editor
from pipeline.errors import EditCanceled, GpuOutOfMemory
from pipeline.images import encode_image
from pipeline.standin import StandInEditor
from schemas.requests import OutputFormat


def job(**overrides: Any) -> EditJob:
    fields: dict[str, Any] = {
        "images": [Image.new("RGB", (100, 60), (200, 40, 40))],
        "prompt": "p",
        "num_inference_steps": 5,
        "guidance_scale": 4.0,
        "seed": 1,
        "width": 64,
        "height": 48,
    }
    fields.update(overrides)
    return EditJob(**fields)


def test_holds_for_edit_ms_and_reports_steps() -> None:
    editor: Editor = StandInEditor(edit_ms=50)
    seen: list[tuple[int, int]] = []
    output = editor.edit(job(on_step=lambda i, n: seen.append((i, n))))
    assert seen == [(i, 5) for i in range(1, 6)]
    assert output.image.size == (64, 48)
    assert 45 <= output.inference_ms < 500
    assert editor.model_name == "stand-in"
    assert editor.memory_stats() == {"allocated_bytes": 0.0, "peak_bytes": 0.0}
    editor.warm_up()


def test_image_is_deterministic_per_seed() -> None:
    editor = StandInEditor(edit_ms=0)
    first = encode_image(editor.edit(job(seed=5)).image, OutputFormat.PNG)
    assert encode_image(editor.edit(job(seed=5)).image, OutputFormat.PNG) == first
    assert encode_image(editor.edit(job(seed=6)).image, OutputFormat.PNG) != first


def test_cancel_stops_early_and_still_counts_busy_time() -> None:
    editor = StandInEditor(edit_ms=400)

    def cancel_at_two(done: int, _total: int) -> None:
        if done == 2:
            raise EditCanceled("stop")

    start = time.perf_counter()
    with pytest.raises(EditCanceled):
        editor.edit(job(on_step=cancel_at_two))
    elapsed = time.perf_counter() - start
    # Two of five 80 ms steps ran: well short of the whole 400 ms edit, and all of it counted as busy.
    assert elapsed < 0.32
    assert 0.15 <= editor.busy_seconds <= elapsed
    assert editor.edits == 1


def test_without_step_callbacks_on_step_is_never_called() -> None:
    editor = StandInEditor(edit_ms=10, steps_callback=False, model_name="m")
    seen: list[int] = []
    editor.edit(job(on_step=lambda i, _n: seen.append(i)))
    assert seen == []
    assert editor.model_name == "m"


def test_busy_seconds_accumulates() -> None:
    editor = StandInEditor(edit_ms=20)
    for _ in range(3):
        editor.edit(job())
    assert 0.06 <= editor.busy_seconds < 0.5


def test_fault_injection() -> None:
    def out_of_memory(_job: EditJob) -> None:
        raise GpuOutOfMemory("drill")

    editor = StandInEditor(edit_ms=10, fault=out_of_memory)
    with pytest.raises(GpuOutOfMemory, match="drill"):
        editor.edit(job())
    assert editor.edits == 1


def test_negative_edit_ms_is_rejected() -> None:
    with pytest.raises(ValueError, match="edit_ms"):
        StandInEditor(edit_ms=-1)

"""`klein-edit bench quality` mechanics on the tiny model (random weights: the figures mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import PipelineSettings
from pipeline.tools.quality import load_cases, quality_settings, run_quality_benchmark
from tests.pipeline.conftest import synthetic_image

ROOT = Path(__file__).resolve().parents[3]
STEPS = 4


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    synthetic_image(80, 64, 0).save(images / "a.png")
    synthetic_image(64, 96, 1).save(images / "b.jpg")
    (images / "notes.txt").write_text("ignored")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("make the sky purple\n\nrecolour the jacket red\n")
    return images, prompts


def test_option_set_names() -> None:
    base = PipelineSettings(model="tiny-random", device="cpu")
    both = quality_settings("float8+compile+dbcache@0.12", base)
    assert (both.quantize_float8, both.compile, both.step_cache, both.step_cache_threshold) == (
        True,
        True,
        "dbcache",
        0.12,
    )
    assert quality_settings("interval@0.1-0.9", base).guidance_interval == (0.1, 0.9)
    assert quality_settings("attn@auto", base).attention == "auto"
    assert quality_settings("bf16", base) == base.model_copy(update={"text_encoder_placement": "gpu"})
    with pytest.raises(ValueError, match="unknown option set"):
        quality_settings("turbo", base)


def test_cases_pair_every_image_with_every_prompt_and_seed(inputs: tuple[Path, Path]) -> None:
    cases = load_cases(*inputs, seeds=[0, 7], size=64)
    assert [case.name for case in cases][:3] == ["a.png#p0#s0", "a.png#p0#s7", "a.png#p1#s0"]
    assert len(cases) == 2 * 2 * 2
    assert {case.image.size for case in cases} == {(64, 64)}


def test_each_option_set_is_compared_with_the_reference_on_the_same_edits(
    saved_tiny_dir: Path, inputs: tuple[Path, Path]
) -> None:
    base = PipelineSettings(
        model=str(saved_tiny_dir),
        device="cpu",
        warmup_sizes=[(64, 64)],
        step_cache_front_blocks=1,  # the tiny model has few blocks and the edits few steps
        step_cache_warmup_steps=1,
    )
    cases = load_cases(*inputs, seeds=[3], size=64)[:2]
    summary = run_quality_benchmark(
        base, ["interval@0.5-1.0", "dbcache@10"], cases, steps=STEPS, guidance=4.0
    )
    reference, interval, cached = summary["results"]
    assert reference["option_set"] == "bf16"
    assert reference["psnr_mean"] == "inf"  # identical to itself: the run is deterministic
    assert reference["ssim_mean"] == 1.0
    assert reference["transformer_passes_mean"] == 2 * STEPS
    assert interval["transformer_passes_mean"] == STEPS + 2  # the second half runs the unconditional pass
    assert interval["psnr_mean"] != "inf"  # a different output (by how much means nothing here)
    assert cached["transformer_passes_mean"] < 2 * STEPS
    assert all(r["speedup"] > 0 and r["edits"] == 2 for r in summary["results"])
    assert summary["lpips"].startswith("unavailable")  # no LPIPS weights here: reported, not guessed
    assert all(r["lpips_mean"] is None and r["passes_gate"] is None for r in summary["results"])


def test_the_command_prints_a_table_and_one_json_line(
    saved_tiny_dir: Path, inputs: tuple[Path, Path]
) -> None:
    images, prompts = inputs
    env = {
        **os.environ,
        "KLEIN_EDIT_PIPELINE__MODEL": str(saved_tiny_dir),
        "KLEIN_EDIT_PIPELINE__DEVICE": "cpu",
        "KLEIN_EDIT_PIPELINE__WARMUP_SIZES": "[[64, 64]]",
    }
    command = [sys.executable, "-m", "consumer", "bench", "quality", "--option-sets", "interval@0.5-1.0"]
    command += ["--images", str(images), "--prompts", str(prompts), "--steps", "2", "--size", "64"]
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["option", "set", "PSNR"]
    summary = json.loads(lines[-1])
    assert [r["option_set"] for r in summary["results"]] == ["bf16", "interval@0.5-1.0"]
    assert len(summary["cases"]) == 4

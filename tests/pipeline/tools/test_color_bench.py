"""`python -m pipeline.tools.color_bench` mechanics at a small size (the figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.tools.color_bench import main


def test_prints_a_table_and_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(150, 30, (96, 128, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("ignored")
    code = main(
        ["--size", "128", "--colors", "#1E90FF", "--seeds", "0", "--errors", "0,6", "--images", str(tmp_path)]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["mode"] == "color"
    assert [case["source"] for case in result["cases"]] == ["render", "render", "photo.png", "photo.png"]
    assert set(result["summary"]["groups"]) == {"render 0.0", "render 6.0", "photo 0.0", "photo 6.0"}
    assert {"measure_median", "measure_correct_median"} <= set(result["summary"]["speed_ms_per_mp"]["render"])
    assert any(line.startswith("render (") for line in lines)


def test_refuses_a_size_out_of_range() -> None:
    with pytest.raises(SystemExit):
        main(["--size", "32"])

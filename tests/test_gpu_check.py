"""The device check cannot rot: its dry run (same steps, tiny model, CPU) runs here, and the wheel-set logic
that decides what the device machine gets is checked on a made-up resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.import_check import check
from benchmarks.wheelset import DEVICE_BASELINE, carried, check_wheel_names, project_requirements

ROOT = Path(__file__).resolve().parent.parent
OPTION_SETS = ("bf16", "float8", "24gb", "float8+compile")


def dry_run(call: str, out: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "OUT": str(out), "KLEIN_EDIT_CHECK_PYTHON": sys.executable}
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", call, "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    failed = [line for line in lines if line.get("ok") is False]
    assert not failed, failed
    assert completed.returncode == 0, completed.stderr[-3000:]
    return lines


def steps_of(lines: list[dict[str, Any]], option_set: str) -> set[str]:
    return {line["step"] for line in lines if line.get("option_set") == option_set}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_call1_dry_run_runs_every_step_and_writes_a_json_line_per_result(tmp_path: Path) -> None:
    lines = dry_run("call1", tmp_path)
    shell_steps = {line["step"] for line in lines if line.get("call") == "call1"}
    assert {"device", "import-smoke", "pytest-gpu"} <= shell_steps
    assert {f"call1-{name}" for name in OPTION_SETS} <= shell_steps
    for name in OPTION_SETS:
        assert steps_of(lines, name) == {"build", "memory_growth", "oom_recovery", "determinism", "done"}
    imports = next(line for line in lines if line["step"] == "import_check")
    assert imports["strict"]
    assert imports["failed"] == {}
    assert imports["imported"] > 50
    growth = [line for line in lines if line["step"] == "memory_growth"]
    assert all(line["prompts"] == 20 and line["cached_on_device"] == 0 for line in growth)
    oom = [line for line in lines if line["step"] == "oom_recovery"]
    assert all(line["error_code"] == "GPU_OUT_OF_MEMORY" and line["identical"] for line in oom)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_call2_dry_run_times_each_reference_count_and_counts_no_recompiles(tmp_path: Path) -> None:
    lines = dry_run("call2", tmp_path)
    for name in OPTION_SETS:
        assert {f"passes_{n}_references" for n in (0, 1, 4)} <= steps_of(lines, name)
    passes = [line for line in lines if line["step"].startswith("passes_")]
    assert all(line["transformer_passes"] == 4 for line in passes)  # 2 steps x (cond + uncond)
    recompiles = {line["option_set"]: line for line in lines if line["step"] == "recompiles"}
    assert recompiles["float8+compile"]["compilations"] == 2  # one graph per block class
    assert all(line["recompiles_after_ready"] == 0 for line in recompiles.values())


def test_wheel_set_is_what_the_device_lacks() -> None:
    requirements = project_requirements()
    names = {spec.split("=")[0].split(">")[0].split("[")[0].split("<")[0].lower() for spec in requirements}
    assert {"diffusers", "pydantic", "boto3", "structlog", "torchao"} <= names
    assert not names & {"torch", "transformers", "numpy", "pillow", "aiohttp"}


def item(name: str, version: str, *requires: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_carried_follows_dependencies_but_not_through_the_baseline() -> None:
    items = [
        item(
            "pydantic",
            "2.14",
            "pydantic-core==2.50",
            "typing-extensions>=4",
            'email-validator; extra == "email"',
        ),
        item("pydantic-core", "2.50"),
        item("typing-extensions", "4.16"),
        item("huggingface-hub", "1.0", "httpx"),  # baseline: its own dependencies are on the device
        item("httpx", "0.28"),
        item("diffusers", "0.42.1", "huggingface-hub", "importlib-metadata", 'zipp; python_version < "3.8"'),
        item("importlib-metadata", "10", "zipp>=3"),
        item("zipp", "4"),
    ]
    assert "huggingface-hub" in DEVICE_BASELINE
    assert carried(["pydantic>=2.9", "diffusers==0.42.1"], items) == {
        "diffusers": "0.42.1",
        "importlib-metadata": "10",
        "pydantic": "2.14",
        "pydantic-core": "2.50",
        "typing-extensions": "4.16",
        "zipp": "4",
    }


def test_wheel_names_must_fit_cp312_manylinux_x86_64() -> None:
    good = [
        "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "six-1.17.0-py2.py3-none-any.whl",
    ]
    bad = ["cramjam-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl", "x-1-cp312-cp312-macosx_11_0_arm64.whl"]
    assert check_wheel_names(good + bad) == bad


def test_import_check_defers_only_a_missing_baseline_module() -> None:
    ok, deferred, failed = check(["json", "benchmarks.tests_missing_module_xyz"], strict=False)
    assert ok == ["json"]
    assert deferred == {}
    assert "benchmarks.tests_missing_module_xyz" in failed

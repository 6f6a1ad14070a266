"""`klein-edit bench adapters` runs end to end on the tiny model and reports every figure."""

from __future__ import annotations

import pytest

from consumer.cli.adapter_bench import run_adapter_benchmark
from pipeline.config import TINY_RANDOM, PipelineSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]  # starts a local S3 server (moto)


def test_the_adapter_benchmark_measures_every_path() -> None:
    summary = run_adapter_benchmark(
        PipelineSettings(model=TINY_RANDOM, device="cpu", warmup=False), rank=2, repeats=2
    )
    for key in (
        "host_miss_ms",
        "host_hit_ms",
        "gpu_cold_load_ms",
        "gpu_switch_resident_ms",
        "gpu_to_none_and_back_ms",
        "slot_swap_ms",
        "slot_to_none_ms",
        "edit_without_adapter_ms",
        "edit_with_adapter_ms",
    ):
        assert summary[key] > 0, key
    assert summary["adapter_bytes"] > 0

"""Attention backend selection: the choice logic with injected trials, the real check on the CPU (native)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch

from pipeline.attention import (
    AUTO_CANDIDATES,
    DIFFUSERS_BACKENDS,
    BackendTrial,
    BlockProbe,
    choose_backend,
    select_attention,
    unavailable_reason,
)
from pipeline.config import PipelineSettings
from pipeline.editor import KleinEditor
from pipeline.errors import ModelLoadError
from pipeline.tiny import tiny_transformer_config


def fake_probe(trials: dict[str, BackendTrial]) -> Any:
    tried: list[str] = []

    def probe(name: str) -> BackendTrial:
        tried.append(name)
        return trials[name]

    probe.tried = tried  # type: ignore[attr-defined]
    return probe


TRIALS = {
    "sage": BackendTrial("sage", max_abs_diff=0.5, bound=0.02, ms=1.0),  # fastest, but fails the check
    "flash3": BackendTrial("flash3", max_abs_diff=0.001, bound=0.02, ms=2.0),
    "cudnn": BackendTrial("cudnn", max_abs_diff=0.0, bound=0.02, ms=3.0),
    "native": BackendTrial("native", max_abs_diff=0.0, bound=0.02, ms=4.0),
}


def test_auto_picks_the_fastest_backend_that_passes_the_check() -> None:
    probe = fake_probe(TRIALS)
    chosen, trials = choose_backend("auto", probe)
    assert chosen == "flash3"
    assert probe.tried == list(AUTO_CANDIDATES)
    assert [trial.passed for trial in trials] == [False, True, True, True]


def test_auto_skips_backends_that_are_not_installed() -> None:
    trials = {**TRIALS, "flash3": BackendTrial("flash3", unavailable="no flash_attn_interface")}
    chosen, _ = choose_backend("auto", fake_probe(trials))
    assert chosen == "cudnn"


def test_auto_falls_back_to_native_when_nothing_passes() -> None:
    failing = {name: BackendTrial(name, unavailable="needs CUDA") for name in AUTO_CANDIDATES}
    assert choose_backend("auto", fake_probe(failing))[0] == "native"


def test_an_explicit_backend_that_fails_its_check_refuses_to_start() -> None:
    with pytest.raises(ModelLoadError, match=r"ATTENTION=sage cannot be used: sage: max \|diff\| 0.5"):
        choose_backend("sage", fake_probe(TRIALS))
    with pytest.raises(ModelLoadError, match="flash3: unavailable"):
        choose_backend("flash3", fake_probe({"flash3": BackendTrial("flash3", unavailable="not installed")}))
    assert choose_backend("cudnn", fake_probe(TRIALS))[0] == "cudnn"


def test_native_needs_no_probe() -> None:
    assert choose_backend("native", fake_probe({})) == ("native", [])


def test_every_name_is_a_diffusers_backend() -> None:
    dispatch: Any = importlib.import_module("diffusers.models.attention_dispatch")
    names = {member.value for member in dispatch.AttentionBackendName}
    assert set(DIFFUSERS_BACKENDS.values()) <= names


def test_only_native_runs_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert unavailable_reason("native", cpu) is None
    assert all(unavailable_reason(name, cpu) == "needs CUDA" for name in ("cudnn", "flash3", "sage"))


def tiny_transformer() -> torch.nn.Module:
    diffusers: Any = importlib.import_module("diffusers")
    module: torch.nn.Module = diffusers.Flux2Transformer2DModel(**tiny_transformer_config()).eval()
    return module


def test_the_block_check_of_native_against_itself_is_exact() -> None:
    probe = BlockProbe(tiny_transformer(), tolerance=0.02)
    trial = probe("native")
    assert trial.passed
    assert trial.max_abs_diff == 0.0
    assert trial.ms is not None
    assert trial.ms > 0
    assert probe("sage").unavailable == "needs CUDA"


def test_auto_on_the_cpu_selects_native() -> None:
    chosen, trials = select_attention(tiny_transformer(), "auto", tolerance=0.02)
    assert chosen == "native"
    assert [trial.backend for trial in trials if trial.passed] == ["native"]


def test_the_editor_reports_its_backend(saved_tiny_dir: Any) -> None:
    settings = PipelineSettings(model=str(saved_tiny_dir), device="cpu", attention="auto")
    assert KleinEditor.load(settings).attention_backend == "native"
    with pytest.raises(ModelLoadError, match="ATTENTION=cudnn cannot be used: cudnn: unavailable"):
        KleinEditor.load(settings.model_copy(update={"attention": "cudnn"}))

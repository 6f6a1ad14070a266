"""The model's identity for provenance: the revision of a Hub snapshot and of a directory, the versions."""

from __future__ import annotations

import hashlib
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.identity import directory_revision, model_revision, runtime_versions
from pipeline.loader import load_pipeline


def documented_hash(directory: Path) -> str:
    """The rule of docs/provenance.md, written out independently of `directory_revision`."""
    lines = []
    for path in sorted(directory.rglob("*.json"), key=lambda p: p.relative_to(directory).as_posix()):
        relative = path.relative_to(directory).as_posix()
        if relative.count("/") <= 1:
            lines.append(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return hashlib.sha256(b"".join(lines)).hexdigest()


def test_a_hub_snapshot_is_named_by_its_commit(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--owner--name" / "snapshots" / ("0123456789abcdef" * 2 + "01234567")
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    assert model_revision(snapshot) == (snapshot.name, "hub")


def test_a_directory_is_named_by_its_json_files_not_its_weights(saved_tiny_dir: Path, tmp_path: Path) -> None:
    revision, source = model_revision(saved_tiny_dir)
    assert source == "directory"
    assert revision == documented_hash(saved_tiny_dir)
    copy = tmp_path / "copy"
    shutil.copytree(saved_tiny_dir, copy)
    assert directory_revision(copy) == revision  # a copy elsewhere is the same model
    weights = next(copy.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # weights are not read
    assert directory_revision(copy) == revision
    config = copy / "transformer" / "config.json"
    config.write_text(config.read_text().replace("{", '{"_changed": 1, ', 1))
    assert directory_revision(copy) != revision


def test_the_loaded_tiny_model_describes_itself(tiny_pipe: Any, saved_tiny_dir: Path) -> None:
    from pipeline.identity import describe_pipeline

    identity = describe_pipeline(tiny_pipe, PipelineSettings(model=TINY_RANDOM, device="cpu"), TINY_RANDOM)
    assert identity.model == TINY_RANDOM
    assert (identity.revision, identity.revision_source) == (documented_hash(saved_tiny_dir), "directory")
    assert identity.dtype == "float32"
    assert identity.quantization == "none"
    assert identity.compiled is False
    assert identity.attention == "native"
    assert identity.scheduler == "FlowMatchEulerDiscreteScheduler"


def test_loading_by_name_and_by_directory_give_the_same_revision(saved_tiny_dir: Path) -> None:
    pipe, _ = load_pipeline(PipelineSettings(model=TINY_RANDOM, device="cpu"))
    assert Path(pipe.name_or_path) == saved_tiny_dir


def test_runtime_versions_are_the_installed_ones() -> None:
    versions = runtime_versions()
    for name in ("klein-edit", "diffusers", "transformers", "torch"):
        assert versions[name] == version(name)
    assert versions.get("cuda") == torch.version.cuda

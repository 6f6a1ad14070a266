"""The wheels a GPU device machine lacks, derived from pyproject.toml, for CPython 3.12 manylinux x86-64.

The device machine (docs/benchmarks.md, "The device check") has Python 3.12, torch and the packages in
`DEVICE_BASELINE`, and cannot reach a package index. Everything else the project imports travels as
wheels in `.whl/`, which `benchmarks/gpu_check.sh` installs with `--no-index --no-deps`. This script:

1. resolves pyproject's dependencies plus `DEVICE_EXTRAS` for cp312 / manylinux x86-64 with pip
   (`pip install --dry-run --report`, nothing installed), against whatever index pip is configured for;
2. keeps the distributions reachable from the requirements without passing through the baseline
   (a baseline package's own dependencies are already on the device);
3. writes them, pinned, to `.whl/wheels.txt` and downloads exactly those wheels (`--no-deps`).

    python benchmarks/wheelset.py [--dest .whl]        # prints one JSON line: the pinned set

Runs on the developer machine (any Python >= 3.11 with pip); the install-and-import check is
`benchmarks/gpu_check.sh wheels`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# Installed on the device machine (see the device notes): never carried. Their own dependencies are
# there too, so a distribution reached only through one of them is not carried either.
DEVICE_BASELINE = frozenset(
    canonicalize_name(name)
    for name in (
        "torch",
        "triton",
        "transformers",
        "tokenizers",
        "safetensors",
        "accelerate",
        "huggingface_hub",
        "peft",
        "numpy",
        "pillow",
        "aiohttp",
        "prometheus-client",
        "pytest",
        "pytest-timeout",
        "requests",
        "pyyaml",
        "packaging",
        "rich",
        "tqdm",
        # Hard dependencies of the above (torch: filelock, fsspec, jinja2; transformers: regex;
        # requests: urllib3, idna, certifi, charset-normalizer).
        "filelock",
        "fsspec",
        "jinja2",
        "markupsafe",
        "regex",
        "urllib3",
        "idna",
        "certifi",
        "charset-normalizer",
    )
)
# Not in pyproject's dependencies but used on the device: float8 needs torchao (0.18 pairs with the
# device's torch 2.11), the step cache cache-dit.
DEVICE_EXTRAS = ("torchao==0.18.0", "cache-dit==1.5.3")
MARKER_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """pyproject's runtime dependencies that the device lacks, plus `DEVICE_EXTRAS`."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    wanted = [
        spec
        for spec in data["project"]["dependencies"]
        if canonicalize_name(Requirement(spec).name) not in DEVICE_BASELINE
    ]
    return [*wanted, *DEVICE_EXTRAS]


def platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def resolve(requirements: list[str]) -> list[dict[str, Any]]:
    """pip's resolution for the device's Python and platform: the report's `install` items."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--target",
            str(Path(scratch) / "target"),
            *platform_args(),
            *requirements,
        ]
        subprocess.run(command, check=True)
        items: list[dict[str, Any]] = json.loads(report.read_text(encoding="utf-8"))["install"]
    return items


def carried(requirements: list[str], items: list[dict[str, Any]]) -> dict[str, str]:
    """{distribution: version} reachable from `requirements` without entering the device baseline."""
    by_name = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in items}
    pending = [(Requirement(spec), "") for spec in requirements]
    seen: dict[str, str] = {}
    visited_extras: set[tuple[str, str]] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({**MARKER_ENV, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name in DEVICE_BASELINE:
            continue
        metadata = by_name.get(name)
        if metadata is None:
            raise SystemExit(f"wheelset: pip's resolution has no {name} (required as {requirement})")
        seen[name] = metadata["version"]
        for wanted_extra in ["", *sorted(requirement.extras)]:
            if (name, wanted_extra) in visited_extras:
                continue
            visited_extras.add((name, wanted_extra))
            for spec in metadata.get("requires_dist", []):
                pending.append((Requirement(spec), wanted_extra))
    return dict(sorted(seen.items()))


def download(pins: dict[str, str], dest: Path) -> list[str]:
    """Download exactly `pins` (no dependencies) into `dest`, emptied first; returns the wheel names."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    (dest / "wheels.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *platform_args()]
    subprocess.run([*command, "-d", str(dest), "-r", str(dest / "wheels.txt")], check=True)
    return sorted(path.name for path in dest.glob("*.whl"))


def check_wheel_names(wheels: list[str]) -> list[str]:
    """Wheel names that cannot install on cp312 manylinux x86-64 (expected: none)."""
    bad = []
    for name in wheels:
        tags = name.removesuffix(".whl").split("-")[-3:]
        python, abi, platform = tags
        abi3 = "abi3" in abi.split(".")
        python_ok = any(
            tag in {"py3", "cp312"}
            or (abi3 and re.fullmatch(r"cp3\d+", tag) is not None and int(tag[3:]) <= 12)
            for tag in python.split(".")
        )
        abi_ok = any(tag in {"none", "abi3", "cp312"} for tag in abi.split("."))
        platform_ok = any(
            tag == "any" or (tag.startswith("manylinux") and tag.endswith("x86_64"))
            for tag in platform.split(".")
        )
        if not (python_ok and abi_ok and platform_ok):
            bad.append(name)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--resolve-only", action="store_true", help="print the pinned set, download nothing")
    args = parser.parse_args(argv)
    requirements = project_requirements()
    pins = carried(requirements, resolve(requirements))
    wheels = [] if args.resolve_only else download(pins, args.dest)
    bad = check_wheel_names(wheels)
    size = sum((args.dest / name).stat().st_size for name in wheels)
    print(
        json.dumps(
            {
                "step": "wheelset",
                "ok": not bad,
                "pins": pins,
                "wheels": wheels,
                "bytes": size,
                "unusable": bad,
            }
        ),
        flush=True,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

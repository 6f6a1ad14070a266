"""Import every module of the project, and every top-level module of the carried wheels, with this Python.

Standard library only: it runs with the device's Python 3.12 before anything else is known to work.

    python3 -m benchmarks.import_check --target DIR [--strict]

A module whose import fails because a *device baseline* module is missing (torch, transformers, ...:
installed on the device machine, not carried) is reported as `deferred`, unless `--strict` (on the
device, where the baseline is present, nothing may be deferred). Any other failure is a failure.
Prints one JSON line; exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "storage", "pipeline", "consumer")
# Import names of the device machine's own packages (benchmarks/wheelset.py DEVICE_BASELINE).
BASELINE_MODULES = frozenset(
    {
        "torch",
        "triton",
        "transformers",
        "tokenizers",
        "safetensors",
        "accelerate",
        "huggingface_hub",
        "peft",
        "numpy",
        "PIL",
        "aiohttp",
        "prometheus_client",
        "pytest",
        "requests",
        "yaml",
        "packaging",
        "rich",
        "tqdm",
        "filelock",
        "fsspec",
        "jinja2",
        "markupsafe",
        "regex",
        "urllib3",
        "idna",
        "certifi",
        "charset_normalizer",
    }
)


def project_modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] == "__main__":
                continue  # running it is not importing it
            names.append(".".join(parts))
    return names


def wheel_modules(target: Path) -> list[str]:
    """Top-level import names of the distributions installed in `target` (from their RECORD files)."""
    names: set[str] = set()
    for dist in metadata.distributions(path=[str(target)]):
        for file in dist.files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".data")) or top in {"bin", "..", "__pycache__"}:
                continue
            if len(file.parts) == 1:
                if file.suffix == ".py":
                    names.add(file.stem)
                elif file.suffix == ".so":
                    names.add(file.name.split(".")[0])
            elif file.name == "__init__.py" and len(file.parts) == 2:
                names.add(top)
    return sorted(names)


def check(modules: list[str], *, strict: bool) -> tuple[list[str], dict[str, str], dict[str, str]]:
    ok: list[str] = []
    deferred: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing in BASELINE_MODULES and not strict:
                deferred[name] = missing
            else:
                failed[name] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3)[-600:]}"
        else:
            ok.append(name)
    return ok, deferred, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", type=Path, required=True, help="where the wheels were installed")
    parser.add_argument("--strict", action="store_true", help="baseline present: nothing may be deferred")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.target))
    sys.path.insert(1, str(ROOT))
    wheels = wheel_modules(args.target)
    ok, deferred, failed = check([*wheels, *project_modules()], strict=args.strict)
    print(
        json.dumps(
            {
                "step": "import_check",
                "ok": not failed,
                "python": sys.version.split()[0],
                "strict": args.strict,
                "wheel_modules": wheels,
                "imported": len(ok),
                "deferred_to_device": deferred,
                "failed": failed,
            }
        ),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

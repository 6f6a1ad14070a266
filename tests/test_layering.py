"""The house rules that keep the packages easy to change, checked on the source so a slip fails CI.

- Imports run one way: `schemas` imports nothing of ours, `storage` and `pipeline` import only
  `schemas`, `consumer` wires everything and nothing imports it.
- Async lives only in `consumer`: the other packages are plain synchronous code.
- Configuration is read once: no package reads `os.environ` (pydantic-settings does, in `consumer`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "storage", "pipeline", "consumer")
ALLOWED = {
    "schemas": {"schemas"},
    "storage": {"storage", "schemas"},
    "pipeline": {"pipeline", "schemas"},
    "consumer": set(PACKAGES),
}


def modules(package: str) -> list[tuple[Path, ast.Module]]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    return [(path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))) for path in files]


def imported_packages(tree: ast.Module) -> set[tuple[str, int]]:
    """(top-level package, line) for every absolute import; relative imports stay inside a package."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path, tree in modules(package)
        for name, line in imported_packages(tree)
        if name in PACKAGES and name not in ALLOWED[package]
    ]
    assert wrong == []


def async_constructs(tree: ast.Module) -> list[int]:
    async_nodes = ast.AsyncFunctionDef | ast.Await | ast.AsyncWith | ast.AsyncFor
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, async_nodes)]
    return lines + [line for name, line in imported_packages(tree) if name in {"asyncio", "aiokafka"}]


def environment_reads(tree: ast.Module) -> list[int]:
    names = {"environ", "environb", "getenv"}
    return [
        node.lineno
        for node in ast.walk(tree)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in names
        )
        or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in names for alias in node.names)
        )
    ]


def findings(package: str, walker: Callable[[ast.Module], list[int]]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}" for path, tree in modules(package) for line in walker(tree)]


@pytest.mark.parametrize("package", ["schemas", "storage", "pipeline"])
def test_async_lives_only_in_consumer(package: str) -> None:
    assert findings(package, async_constructs) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_reads_the_environment(package: str) -> None:
    assert findings(package, environment_reads) == []


def test_the_checks_see_a_violation() -> None:
    """Each walker finds what it looks for: a check that can never fail proves nothing."""
    tree = ast.parse(
        "import os, asyncio\n"
        "from os import getenv\n"
        "from consumer.app import serve\n"
        "async def f():\n"
        "    return os.environ\n"
    )
    assert ("consumer", 3) in imported_packages(tree)
    assert sorted(async_constructs(tree)) == [1, 4]
    assert sorted(environment_reads(tree)) == [2, 5]


def test_the_worker_runtime_does_not_import_the_command_line() -> None:
    """`consumer/cli/` (submit, demo, dev, dlq, bench) sits on top of the runtime, never under it."""
    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in modules("consumer")
        if "cli" not in path.relative_to(ROOT / "consumer").parts[:1] and path.name != "__main__.py"
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("consumer.cli"))
        or (isinstance(node, ast.Import) and any(a.name.startswith("consumer.cli") for a in node.names))
    ]
    assert wrong == []

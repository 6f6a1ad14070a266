"""The command line's shape: each command a module with `add_parser` and `run`, a parser that imports
nothing heavy, and one table of exit statuses.

Speed is not asserted (it depends on the machine); what makes `--help` fast is that building and using
the parser imports no torch, diffusers, aiokafka or boto3: a command's `run` imports them. How each
status reaches the process (one line on stderr, the exit code) is checked on the real executable in
test_cli.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import textwrap

import pytest
from aiokafka.errors import KafkaConnectionError

import consumer.settings
from consumer.cli import main as cli_main
from consumer.cli.main import (
    COMMANDS,
    DEFAULT_ENV_FILE,
    DEFAULT_SECRETS_DIR,
    EXIT_STATUS,
    build_parser,
    exit_status,
)

HEAVY = ("torch", "diffusers", "transformers", "aiokafka", "boto3", "PIL", "consumer.app")


def imported_after(code: str) -> dict[str, list[str]]:
    """Runs `code` in a fresh interpreter; for each key it sets in `found`, the HEAVY modules loaded."""
    script = (
        textwrap.dedent(
            f"""
        import json, sys
        found = {{}}
        def heavy():
            return [name for name in {HEAVY!r} if name in sys.modules]
        """
        )
        + textwrap.dedent(code)
        + "\nprint(json.dumps(found))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found: dict[str, list[str]] = json.loads(proc.stdout.splitlines()[-1])
    return found


def test_help_and_version_import_nothing_heavy() -> None:
    found = imported_after(
        """
        import contextlib, io
        from consumer.cli.main import main
        for argv in (["--help"], ["--version"], ["worker", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main(argv)
            found[" ".join(argv)] = heavy()
        """
    )
    assert found == {"--help": [], "--version": [], "worker --help": []}


def test_every_commands_help_imports_nothing_heavy() -> None:
    """`bench pipeline --help` is left out: it is `pipeline.tools.bench`'s own parser, which imports torch."""
    found = imported_after(
        """
        import argparse, contextlib, io
        from consumer.cli.main import build_parser, main

        def paths(parser, path=()):
            yield path
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, child in action.choices.items():
                        yield from paths(child, (*path, name))

        for path in paths(build_parser()):
            if path == ("bench", "pipeline"):
                continue
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main([*path, "--help"])
            found[" ".join(path) or "klein-edit"] = heavy()
        """
    )
    assert {"klein-edit", "submit", "dev up", "dlq replay", "bench quality"} <= set(found)
    assert {path: modules for path, modules in found.items() if modules} == {}


def test_the_pipeline_package_imports_without_torch() -> None:
    found = imported_after(
        """
        import pipeline, pipeline.config
        from pipeline import ModelLoadError, PipelineSettings, errors
        found["pipeline"] = heavy()
        """
    )
    assert found == {"pipeline": []}


def test_every_public_name_of_the_pipeline_package_resolves() -> None:
    import pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    assert set(pipeline.__all__) <= set(dir(pipeline))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = pipeline.not_a_name


def test_each_command_is_a_module_with_add_parser_and_run() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(commands.choices) == [
        "worker",
        "demo",
        "dev",
        "submit",
        "cancel",
        "schema",
        "fetch-model",
        "dlq",
        "bench",
    ]
    for module, (name, command_parser) in zip(COMMANDS, commands.choices.items(), strict=True):
        assert callable(module.add_parser), name
        assert command_parser.get_default("run") is module.run, name


# --- the exit statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXIT_STATUS))
def test_each_name_in_the_exit_table_is_an_exception_class(name: str) -> None:
    """The table names classes instead of importing them: a class that moved would silently get 1."""
    module, _, qualname = name.rpartition(".")
    cls = getattr(importlib.import_module(module), qualname)
    assert isinstance(cls, type)
    assert issubclass(cls, BaseException)
    assert f"{cls.__module__}.{cls.__qualname__}" == name


def _cause(module: str, name: str, *args: object) -> BaseException:
    cls = getattr(importlib.import_module(module), name)
    error: BaseException = cls(*args)
    return error


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        (_cause("consumer.settings", "ConfigurationError", "x"), 2),
        (_cause("consumer.cli.submit", "SubmitRejected", "x"), 2),
        (_cause("consumer.kafka.clients", "TopicsMissing", "x"), 2),
        (_cause("consumer.http.health", "PortUnavailable", "127.0.0.1", 8080, "in use"), 2),
        (_cause("pipeline.signing", "SigningSetupError", "x"), 2),
        (_cause("pipeline.errors", "ModelLoadError", "x"), 3),
        (_cause("consumer.worker", "KafkaAccessDenied", "x"), 4),
        (KafkaConnectionError("x"), 4),  # a subclass of KafkaError
        (_cause("storage.errors", "StorageUnavailable", "x"), 4),
        (_cause("storage.errors", "InputNotFound", "x"), 1),  # a storage error that is not an outage
        (_cause("consumer.cli.local_services", "ServiceError", "x"), 1),
        (_cause("consumer.cli.dev", "DevServicesFailed", "x"), 1),
        (TimeoutError("x"), 1),
        (None, 1),
        (KeyboardInterrupt(), 130),
    ],
    ids=lambda value: str(value) if isinstance(value, int) else type(value).__name__,
)
def test_the_exit_status_of_each_cause(cause: BaseException | None, status: int) -> None:
    assert exit_status(cause) == status


def test_only_bench_pipeline_takes_flags_it_does_not_declare(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["schema", "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_the_default_configuration_paths_named_by_help_are_the_settings_defaults() -> None:
    assert DEFAULT_ENV_FILE == consumer.settings.DEFAULT_ENV_FILE
    assert DEFAULT_SECRETS_DIR == consumer.settings.DEFAULT_SECRETS_DIR


def test_the_start_up_errors_drawn_in_schemas_errors_have_the_status_drawn() -> None:
    """schemas/errors.py draws each start-up error with its exit status, read from this table."""
    import schemas.errors

    doc = (schemas.errors.__doc__ or "").split("Start-up errors", 1)[-1]
    drawn = re.findall(r"── (\w+) \(([\w.]+)\) \.+ (\d+) ", doc)
    assert drawn, "no start-up errors drawn in schemas/errors.py"
    for name, module, status in drawn:
        cls = getattr(importlib.import_module(module), name)
        assert exit_status(cls.__new__(cls)) == int(status), f"{module}.{name}"

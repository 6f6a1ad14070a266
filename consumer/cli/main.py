"""The `klein-edit` console script: the top-level parser, dispatch, and the exit status of each failure.

Each command lives in its own module (`consumer.cli.worker`, `.submit`, `.bench`, ...) with
`add_parser(subparsers)` and `run(args) -> int`; this module only puts them together. Settings are
built by the commands that need them (`schema`, `--help` and `--version` never read the
configuration). Every expected failure ends the command with one line on stderr that says what to
do, and a non-zero exit status from `EXIT_STATUS`: 1 the command failed (an edit failed, a timeout),
2 bad flags or configuration, 3 the model cannot be loaded, 4 Kafka or S3 cannot be reached,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from consumer import __version__
from consumer.cli import bench, cancel, demo, dev, dlq, fetch_model, schema, submit, worker
from consumer.cli.command import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandFailed,
    HelpFormatter,
)

# In the order `klein-edit --help` lists them.
COMMANDS = (worker, demo, dev, submit, cancel, schema, fetch_model, dlq, bench)

# The exit status of each failure, by the class of the error that caused it (`CommandFailed` is
# raised `from` it); a subclass gets its base's status, and a cause not listed here gets EXIT_FAILED.
# Classes are named rather than imported, so that building the parser imports none of their modules
# (aiokafka, the worker runtime); tests/consumer/test_cli_imports.py checks that each name exists.
# A command gives `CommandFailed` a status of its own only where no error is behind it (a flag that makes
# no sense: 2) and in `bench adapters` and `bench quality`, which exit with 1 for any run that failed.
EXIT_STATUS: dict[str, int] = {
    # bad flags or configuration
    "consumer.settings.ConfigurationError": EXIT_USAGE,
    "consumer.cli.submit.SubmitRejected": EXIT_USAGE,
    "consumer.kafka.clients.TopicsMissing": EXIT_USAGE,
    "consumer.http.health.PortUnavailable": EXIT_USAGE,
    "pipeline.signing.SigningSetupError": EXIT_USAGE,
    # the model cannot be loaded
    "pipeline.errors.ModelLoadError": EXIT_MODEL,
    # Kafka or S3 cannot be reached, or the brokers refuse the worker
    "aiokafka.errors.KafkaError": EXIT_UNREACHABLE,
    "consumer.worker.KafkaAccessDenied": EXIT_UNREACHABLE,
    "storage.errors.StorageUnavailable": EXIT_UNREACHABLE,
    # Ctrl-C
    "builtins.KeyboardInterrupt": EXIT_INTERRUPTED,
}

# consumer.settings.DEFAULT_ENV_FILE and DEFAULT_SECRETS_DIR, which `--help` names: importing that
# module would cost `--help` pydantic-settings and boto3 (through storage); a test pins them equal.
DEFAULT_ENV_FILE = ".env"
DEFAULT_SECRETS_DIR = "/run/secrets/klein-edit"

DESCRIPTION = """\
klein-edit edits images with the FLUX.2 [klein] model, as a service. Your applications publish edit
requests to Kafka (an image in S3, and a prompt or a recolour such as 'the sneakers=#1E90FF');
`klein-edit worker` runs them on a GPU, writes each edited image to S3 and publishes a result event
with its cost and timings.

Try it on this machine (no GPU, no weights, no Docker needed):
  klein-edit demo            one recolour edit end to end, then it stops
  klein-edit dev up          a local Kafka broker and S3 server for `worker` and `submit` by hand

Configuration comes from KLEIN_EDIT_* environment variables (README.md, "Configuration"), a .env
file and a secrets directory; a misspelled variable is an error, not a silent default."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `bench pipeline` passes its own options through to `python -m pipeline.tools.bench`.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    name = " ".join(part for part in ("klein-edit", args.command, getattr(args, "subcommand", None)) if part)
    try:
        _check_configuration_paths(args)
        code: int = args.run(args)
    except CommandFailed as exc:
        for line in str(exc).splitlines():
            print(f"{name}: {line}", file=sys.stderr)
        return exc.exit_code if exc.exit_code is not None else exit_status(exc.__cause__)
    except KeyboardInterrupt as exc:
        return exit_status(exc)
    return code


def exit_status(cause: BaseException | None) -> int:
    """The exit status for a failure caused by `cause` (`EXIT_STATUS`; EXIT_FAILED when not listed)."""
    for cls in type(cause).__mro__:
        status = EXIT_STATUS.get(f"{cls.__module__}.{cls.__qualname__}")
        if status is not None:
            return status
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klein-edit", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"klein-edit {__version__}")
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        default=None,
        help=f"a file of KLEIN_EDIT_*=value lines, read under the environment (default: {DEFAULT_ENV_FILE} "
        "in the current directory, if present)",
    )
    parser.add_argument(
        "--secrets-dir",
        metavar="DIR",
        default=None,
        help="a directory with one file per KLEIN_EDIT_* variable, named like it, e.g. a mounted "
        f"Kubernetes Secret (default: {DEFAULT_SECRETS_DIR}, if present)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _check_configuration_paths(args: argparse.Namespace) -> None:
    """An explicitly given --env-file or --secrets-dir must exist (only the defaults are optional): a
    mistyped path would otherwise be read as an empty one and its settings silently left out."""
    # exists(), not is_file(): `--env-file <(...)` (a pipe) is read too, and must not be consumed here.
    if args.env_file is not None and not Path(args.env_file).expanduser().exists():
        raise CommandFailed(
            f"--env-file {args.env_file}: no such file (leave the flag out to read {DEFAULT_ENV_FILE} "
            "if present)",
            EXIT_USAGE,
        )
    if args.secrets_dir is not None and not Path(args.secrets_dir).expanduser().is_dir():
        raise CommandFailed(
            f"--secrets-dir {args.secrets_dir}: no such directory (leave the flag out to read "
            f"{DEFAULT_SECRETS_DIR} if present)",
            EXIT_USAGE,
        )

"""What every command module shares: the help layout and flag types of its parser, the settings it
reads, and `CommandFailed`, the one-line failure that `main` prints and turns into an exit status.

A command module (`worker`, `submit`, `bench`, ...) has `add_parser(subparsers)`, which adds its flags
and sets `run` as the parser's default, and `run(args) -> int`, which does the work. Building the
parser must stay cheap (`klein-edit --help` in well under a second), so a command module imports only
the standard library, this module and constants at the top; torch, aiokafka, boto3, Pillow and the
worker runtime are imported inside `run` (tests/consumer/test_cli_imports.py checks it).
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING, Any

from schemas.errors import ErrorCode, KleinEditError

if TYPE_CHECKING:
    from consumer.settings import Settings

# Exit statuses; which failure gets which is the table `EXIT_STATUS` in `consumer.cli.main`.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130

# Overrides for commands that never touch S3 (fetch-model, dlq, cancel): the bucket names the worker
# must be given are not asked for. "(unused)" is no valid bucket name, so it can never reach a real bucket.
NO_S3: dict[str, Any] = {"s3": {"input_bucket": "(unused)", "output_bucket": "(unused)"}}


class CommandFailed(Exception):
    """An expected failure: the message is what the user sees, one line (or one per problem).

    Raise it `from` the error that caused it: `main` takes the exit status from that cause's class
    (`consumer.cli.main.EXIT_STATUS`). `exit_code` is given only where there is no such cause (a flag
    that makes no sense) or where a command reports a cause differently (`bench` fails with 1).
    """

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def configured(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The command's `Settings` (environment, .env file, secrets directory, then `overrides`), with
    logging set up from them. A configuration that cannot be used raises `CommandFailed`, one
    `invalid configuration: ...` line per problem, from the `ConfigurationError`."""
    from consumer.logs import configure_logging
    from consumer.settings import ConfigurationError, load_settings

    try:
        settings = load_settings(env_file=args.env_file, secrets_dir=args.secrets_dir, **overrides)
    except ConfigurationError as exc:
        lines = str(exc).splitlines()
        raise CommandFailed("\n".join(f"invalid configuration: {line}" for line in lines)) from exc
    configure_logging(format=settings.log.format, level=settings.log.level)
    return settings


def kafka_unreachable(settings: Settings, exc: BaseException) -> CommandFailed:
    """The failure for aiokafka's `KafkaError` (raise it `from` that error)."""
    return CommandFailed(
        f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({exc}); start a "
        "broker (`klein-edit dev up` runs one here) or set KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS"
    )


def storage_failed(settings: Settings, exc: KleinEditError) -> CommandFailed:
    """The failure for a storage error (raise it `from` that error); an unreachable S3 says where."""
    if exc.code is ErrorCode.STORAGE_UNAVAILABLE:
        where = settings.s3.endpoint_url or "AWS"
        return CommandFailed(
            f"cannot use S3 at {where} ({exc.message}); check KLEIN_EDIT_S3__ENDPOINT_URL and the "
            "credentials (AWS_* or KLEIN_EDIT_S3__ACCESS_KEY_ID), or start a local S3 with "
            "`klein-edit dev up`"
        )
    return CommandFailed(exc.message)


# -- the parser -----------------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line paragraphs of descriptions and epilogs; keeps laid-out ones (tables, examples)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            "\n".join(indent + line for line in paragraph.splitlines())
            if "\n" in paragraph
            else textwrap.fill(paragraph, width, initial_indent=indent, subsequent_indent=indent)
            for paragraph in text.split("\n\n")
        )


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, **kw: Any
) -> argparse.ArgumentParser:
    """A command's parser, laid out like every other; its description is `help` unless given."""
    description = kw.pop("description", help)
    return subparsers.add_parser(
        name, help=help, description=description, formatter_class=HelpFormatter, **kw
    )


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {text}")
    return value

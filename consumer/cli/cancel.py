"""`klein-edit cancel`: ask the workers to cancel a request, on the control topic.

A queued request is skipped when it is read; a running one stops between denoising steps. The
command goes to Kafka only, so it asks for no bucket names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime

from pydantic import ValidationError

from consumer.cli.command import EXIT_USAGE, NO_S3, CommandFailed, add_command, configured, kafka_unreachable
from consumer.cli.submit import describe_flag_errors
from schemas.control import CancelRequested

# The command's wire fields and the arguments that set them, so a rejection names what the user typed.
CANCEL_FLAGS = {"request_id": "REQUEST_ID", "reason": "--reason"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "cancel",
        "ask the workers to cancel a request (skipped if queued, stopped between steps if running)",
    )
    parser.add_argument(
        "request_id", metavar="REQUEST_ID", help="the request's id, 1-128 characters of A-Za-z0-9._:-"
    )
    parser.add_argument(
        "--reason",
        default=None,
        metavar="TEXT",
        help="why, for the logs, up to 500 characters (default: none)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from consumer.cli.local_client import EditClient

    try:
        command = CancelRequested(
            request_id=args.request_id, requested_at=datetime.now(UTC), reason=args.reason
        )
    except ValidationError as exc:
        raise CommandFailed(describe_flag_errors(exc, CANCEL_FLAGS), EXIT_USAGE) from exc
    settings = configured(args, **NO_S3)  # a cancel goes to Kafka only

    async def send() -> None:
        async with EditClient(settings.kafka) as client:
            await client.cancel(command)

    try:
        asyncio.run(send())
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    print(json.dumps({"canceled": command.request_id, "topic": settings.kafka.control_topic}))
    return 0

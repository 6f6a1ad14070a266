"""`klein-edit dev up`: a local Kafka broker and S3 server that stay up for a manual round trip.

Starts the same embedded services as the demo (`consumer.cli.local_services`), creates the buckets and topics
of the configured settings, prints the `export` lines a worker and `submit` need in other terminals,
and stays in the foreground until Ctrl-C, SIGTERM or SIGHUP (the terminal closed), then stops both.
Everything lives in memory.

The embedded services, the Kafka clients and the S3 store are imported in the functions that use them,
not with this module: the parser is built from it on every `klein-edit --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, TextIO, TypeVar

from consumer.cli.command import CommandFailed, HelpFormatter, add_command, configured, port_number
from pipeline.config import TINY_RANDOM
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER

if TYPE_CHECKING:
    from consumer.cli.local_services import LocalService
    from consumer.settings import Settings

# The embedded S3 server accepts any key pair; fixed ones keep boto3 off the host's own credentials.
LOCAL_S3_KEY = "local"
# A one-member group on a local broker: short timeouts make the first join take ~3 s, not ~15 s.
LOCAL_GROUP_TIMEOUTS = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "rebalance_timeout_ms": 6000,
}


_Service = TypeVar("_Service", bound="LocalService")


class DevServicesFailed(RuntimeError):
    """The local services could not be started or stopped unexpectedly; the message says what to do."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(subparsers, "dev", "local services for trying `worker` and `submit` by hand")
    parser.set_defaults(run=run)
    dev = parser.add_subparsers(dest="subcommand", required=True, metavar="DEV_COMMAND")
    up = dev.add_parser(
        "up",
        help="start a local Kafka broker and S3 server, create the buckets and topics, print the "
        "variables to export; Ctrl-C stops them",
        description="Start a Kafka broker (Tansu) and an S3 server (moto) on this machine, create the "
        "buckets and topics, print the `export` lines for a worker and submit in other terminals, and "
        "stay in the foreground until Ctrl-C (or SIGTERM, or SIGHUP when the terminal closes), which stops "
        "both. State lives in memory.",
        formatter_class=HelpFormatter,
    )
    up.add_argument(
        "--kafka-port",
        metavar="PORT",
        type=port_number,
        default=9092,
        help="the broker's port on 127.0.0.1, 0-65535, 0 picks a free one (default: 9092)",
    )
    up.add_argument(
        "--s3-port",
        metavar="PORT",
        type=port_number,
        default=9000,
        help="the S3 server's port on 127.0.0.1, 0-65535, 0 picks a free one (default: 9000)",
    )


def run(args: argparse.Namespace) -> int:
    """`dev up`, the one dev command."""
    try:
        return run_dev_services(
            lambda **overrides: configured(args, **overrides),
            kafka_port=args.kafka_port,
            s3_port=args.s3_port,
        )
    except DevServicesFailed as exc:
        raise CommandFailed(str(exc)) from exc


def run_dev_services(
    configure: Callable[..., Settings], *, kafka_port: int, s3_port: int, out: TextIO = sys.stdout
) -> int:
    """Run the services until SIGINT, SIGTERM or SIGHUP. `configure(**overrides)` builds the settings once the
    services' addresses are known. A port of 0 picks a free one. Returns the exit code (0)."""
    from consumer.cli.local_services import MotoServer, ServiceError, TansuBroker

    for flag, port in (("--kafka-port", kafka_port), ("--s3-port", s3_port)):
        if port and not _port_free(port):
            raise DevServicesFailed(
                f"127.0.0.1:{port} is in use (another `klein-edit dev up`?); pass {flag} PORT "
                "(0 picks a free one)"
            )
    stop = threading.Event()
    # SIGHUP too: closing the terminal must stop the services, not orphan them on their ports.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _setter(stop)) for sig in signals}
    try:
        with contextlib.ExitStack() as services:
            try:
                broker = _start(services, TansuBroker(port=kafka_port or None))
                s3_server = _start(services, MotoServer(port=s3_port or None))
            except ServiceError as exc:
                raise DevServicesFailed(str(exc)) from exc
            settings = configure(
                # A fresh broker of our own: it gets the topics klein-edit would create in development.
                kafka={
                    "bootstrap_servers": broker.bootstrap_servers,
                    "create_topics": True,
                    **LOCAL_GROUP_TIMEOUTS,
                },
                s3={
                    "endpoint_url": s3_server.endpoint_url,
                    "access_key_id": LOCAL_S3_KEY,
                    "secret_access_key": LOCAL_S3_KEY,
                },
            )
            _create_buckets_and_topics(settings)
            _print_exports(settings, out)
            while not stop.wait(0.5):
                for service in (broker, s3_server):
                    if service.process is None or service.process.poll() is not None:
                        raise DevServicesFailed(
                            f"{service.name} stopped unexpectedly; its log is {service.log_path}"
                        )
            print("stopping the local Kafka broker and S3 server", file=out, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def exports(settings: Settings) -> dict[str, str]:
    """The variables a worker and `submit` in another shell need for these local services."""
    kafka, s3 = settings.kafka, settings.s3
    variables = {
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        **{f"KLEIN_EDIT_KAFKA__{name.upper()}": str(value) for name, value in LOCAL_GROUP_TIMEOUTS.items()},
        "KLEIN_EDIT_S3__ENDPOINT_URL": s3.endpoint_url or "",
        "KLEIN_EDIT_S3__ACCESS_KEY_ID": LOCAL_S3_KEY,
        "KLEIN_EDIT_S3__SECRET_ACCESS_KEY": LOCAL_S3_KEY,
        "KLEIN_EDIT_S3__INPUT_BUCKET": s3.input_bucket,
        "KLEIN_EDIT_S3__OUTPUT_BUCKET": s3.output_bucket,
    }
    if "model" not in settings.pipeline.model_fields_set:
        # No weights needed: random weights of the real pipeline classes, on the CPU (output is noise).
        variables["KLEIN_EDIT_PIPELINE__MODEL"] = TINY_RANDOM
        variables["KLEIN_EDIT_PIPELINE__WARMUP"] = "false"
    if "model" not in settings.moderation.model_fields_set:
        # A random-weight classifier of the real class (scores ~0.45, under the 0.85 threshold).
        variables["KLEIN_EDIT_MODERATION__MODEL"] = TINY_IMAGE_CLASSIFIER
    return variables


def _print_exports(settings: Settings, out: TextIO) -> None:
    lines = [
        f"Kafka (Tansu) at {settings.kafka.bootstrap_servers}, S3 (moto) at {settings.s3.endpoint_url}",
        f"buckets {settings.s3.input_bucket} and {settings.s3.output_bucket} and the topics are created.",
        "In each other terminal, run these lines, then `klein-edit worker` or `klein-edit submit ...`:",
        "",
        *(f"export {name}={shlex.quote(value)}" for name, value in exports(settings).items()),
        "",
        "Ctrl-C stops both services (their state lives in memory).",
    ]
    print("\n".join(lines), file=out, flush=True)


def _create_buckets_and_topics(settings: Settings) -> None:
    from consumer.kafka import clients as kafka_io
    from storage import ImageStore

    store = ImageStore(settings.s3)
    for bucket in (settings.s3.input_bucket, settings.s3.output_bucket):
        store.ensure_bucket(bucket)
    kafka = settings.kafka
    topics = [*kafka.request_topics, kafka.result_topic, kafka.dlq_topic]
    topics += [kafka.progress_topic, kafka.control_topic]
    asyncio.run(kafka_io.ensure_topics(kafka, topics))


def _start(services: contextlib.ExitStack, service: _Service) -> _Service:
    services.enter_context(service)
    return service


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As a server binds: a socket of a stopped server lingering in TIME_WAIT does not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _setter(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handler

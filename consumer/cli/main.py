"""The `klein-edit` console script: the parser, one handler per command, and one line per failure.

Settings are built here, once per command and only by the commands that need them (`schema`,
`--help` and `--version` never read the configuration), and passed down. Every expected failure ends
the command with one line on stderr that says what to do, and a non-zero exit code:
1 the command failed (an edit failed, a timeout), 2 bad flags or configuration, 3 the model cannot be
loaded, 4 Kafka or S3 cannot be reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from consumer import __version__
from consumer.logs import configure_logging
from consumer.settings import (
    DEFAULT_ENV_FILE,
    DEFAULT_SECRETS_DIR,
    ConfigurationError,
    Settings,
    load_settings,
)
from pipeline.config import DEFAULT_MODEL, TINY_RANDOM
from schemas.errors import ErrorCode, KleinEditError
from storage.config import LOCAL_INPUT_BUCKET, LOCAL_OUTPUT_BUCKET

# Overrides for commands that start S3 servers of their own: fresh, so the local bucket names fit.
LOCAL_S3: dict[str, Any] = {"s3": {"input_bucket": LOCAL_INPUT_BUCKET, "output_bucket": LOCAL_OUTPUT_BUCKET}}
# Overrides for commands that never touch S3 (fetch-model, dlq, cancel): the bucket names the worker
# must be given are not asked for. "(unused)" is no valid bucket name, so it can never reach a real bucket.
NO_S3: dict[str, Any] = {"s3": {"input_bucket": "(unused)", "output_bucket": "(unused)"}}

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_UNREACHABLE = 4

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

WORKER_EPILOG = f"""\
variables that matter (all KLEIN_EDIT_* are listed in README.md, "Configuration"):
  KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS   brokers, host:port[,host:port] (default 127.0.0.1:9092)
  KLEIN_EDIT_S3__INPUT_BUCKET           where inputs are read; required on AWS
  KLEIN_EDIT_S3__OUTPUT_BUCKET          where outputs are written; required on AWS
  KLEIN_EDIT_S3__ENDPOINT_URL           an S3-compatible endpoint (default: AWS)
  KLEIN_EDIT_PIPELINE__MODEL            a Hub id in the local cache, a directory, or {TINY_RANDOM}
                                        (default {DEFAULT_MODEL})
  KLEIN_EDIT_PIPELINE__DEVICE           auto, cpu or cuda (default auto)
  KLEIN_EDIT_WORKER__HTTP_PORT          /livez, /readyz, /metrics; 1-65535, 0 picks a free one (logged
                                        as http.listening), off serves none (default 8080)
The worker never downloads weights: run `klein-edit fetch-model` first (it needs HF_TOKEN), or use
KLEIN_EDIT_PIPELINE__MODEL={TINY_RANDOM} for random weights on the CPU. SIGTERM drains the edit in flight."""

FETCH_EPILOG = f"""\
variables:
  HF_TOKEN (or KLEIN_EDIT_PIPELINE__HF_TOKEN)  a Hugging Face token; the default model is gated:
                                    accept its licence on the Hub first
  KLEIN_EDIT_PIPELINE__MODEL        the Hub id (default {DEFAULT_MODEL})
  KLEIN_EDIT_PIPELINE__REVISION     a branch, tag or commit (default: main)
  KLEIN_EDIT_PIPELINE__CACHE_DIR    the Hugging Face cache (default: HF_HOME/hub, ~/.cache/huggingface/hub)
Resumable: run it again after an interruption. Prints the local snapshot directory."""


class CommandFailed(Exception):
    """An expected failure: the message is the one line the user sees, `exit_code` the status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `bench pipeline` passes its own options through to `python -m pipeline.tools.bench`.
    args, extra = parser.parse_known_args(argv)
    if extra and args.handler is not _cmd_bench_pipeline:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    name = " ".join(part for part in ("klein-edit", args.command, _subcommand(args)) if part)
    try:
        _check_configuration_paths(args)
        code: int = args.handler(args)
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            print(f"{name}: invalid configuration: {line}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def _subcommand(args: argparse.Namespace) -> str | None:
    names = ("dlq_command", "bench_mode", "dev_command")
    return next((getattr(args, n) for n in names if getattr(args, n, None)), None)


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


def configured(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The command's `Settings` (environment, .env file, secrets directory, then `overrides`), with
    logging set up from them. Raises `ConfigurationError`."""
    settings = load_settings(env_file=args.env_file, secrets_dir=args.secrets_dir, **overrides)
    configure_logging(format=settings.log.format, level=settings.log.level)
    return settings


def kafka_unreachable(settings: Settings, exc: BaseException) -> CommandFailed:
    return CommandFailed(
        f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({exc}); start a "
        "broker (`klein-edit dev up` runs one here) or set KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS",
        EXIT_UNREACHABLE,
    )


def storage_failed(settings: Settings, exc: KleinEditError) -> CommandFailed:
    if exc.code is ErrorCode.STORAGE_UNAVAILABLE:
        where = settings.s3.endpoint_url or "AWS"
        return CommandFailed(
            f"cannot use S3 at {where} ({exc.message}); check KLEIN_EDIT_S3__ENDPOINT_URL and the "
            "credentials (AWS_* or KLEIN_EDIT_S3__ACCESS_KEY_ID), or start a local S3 with "
            "`klein-edit dev up`",
            EXIT_UNREACHABLE,
        )
    return CommandFailed(exc.message)


# -- the parser -----------------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
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


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klein-edit", description=DESCRIPTION, formatter_class=_HelpFormatter
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, handler: Callable[[argparse.Namespace], int], **kw: Any) -> Any:
        description = kw.pop("description", help)
        p = sub.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter, **kw)
        p.set_defaults(handler=handler)
        return p

    command(
        "worker",
        "consume edit requests and run them on the GPU until SIGTERM",
        _cmd_worker,
        description="Consume edit requests from Kafka, edit on the GPU, write outputs to S3 and publish "
        "results, until SIGTERM (the edit in flight is finished first, up to "
        "KLEIN_EDIT_WORKER__DRAIN_GRACE_S, default 300 s).",
        epilog=WORKER_EPILOG,
    )

    p = command(
        "demo",
        "run one recolour edit end to end on a local Kafka and S3, then stop",
        _cmd_demo,
        description="Start a local Kafka broker (Tansu) and S3 server (moto), upload a bundled product shot, "
        f"recolour it with the worker ({TINY_RANDOM} random weights on the CPU unless "
        "KLEIN_EDIT_PIPELINE__MODEL is set: the output is noise by design), save input and output, "
        "and stop everything.",
    )
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        default="demo-output",
        help="where the input and the edited image are saved (default: demo-output)",
    )
    p.add_argument(
        "--no-embedded",
        action="store_true",
        help="use the configured Kafka and S3 (KLEIN_EDIT_KAFKA__*, KLEIN_EDIT_S3__*) instead of local "
        "ones (default: off, local ones are started)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=600.0,
        help="how long to wait for the result, in seconds, more than 0 (default: 600)",
    )

    p = command(
        "dev",
        "local services for trying `worker` and `submit` by hand",
        _cmd_help_of("dev"),
    )
    dev = p.add_subparsers(dest="dev_command", required=True, metavar="DEV_COMMAND")
    up = dev.add_parser(
        "up",
        help="start a local Kafka broker and S3 server, create the buckets and topics, print the "
        "variables to export; Ctrl-C stops them",
        description="Start a Kafka broker (Tansu) and an S3 server (moto) on this machine, create the "
        "buckets and topics, print the `export` lines for a worker and submit in other terminals, and "
        "stay in the foreground until Ctrl-C (or SIGTERM, or SIGHUP when the terminal closes), which stops "
        "both. State lives in memory.",
        formatter_class=_HelpFormatter,
    )
    up.add_argument(
        "--kafka-port",
        metavar="PORT",
        type=_port,
        default=9092,
        help="the broker's port on 127.0.0.1, 0-65535, 0 picks a free one (default: 9092)",
    )
    up.add_argument(
        "--s3-port",
        metavar="PORT",
        type=_port,
        default=9000,
        help="the S3 server's port on 127.0.0.1, 0-65535, 0 picks a free one (default: 9000)",
    )
    up.set_defaults(handler=_cmd_dev_up)

    p = command(
        "submit",
        "publish one edit request built from flags; with --wait, print its result",
        _cmd_submit,
        description="Build an edit request from flags, check it, upload local images to the input bucket "
        "(s3://<input bucket>/uploads/<request id>/), publish it, and with --wait print the result event "
        "(exit 0 only if the edit succeeded).",
        epilog="example:\n  klein-edit submit --image shot.png --recolor 'the sneakers=#1E90FF' --wait "
        "--out edited.png",
    )
    p.add_argument(
        "--image",
        required=True,
        metavar="FILE|S3_URI",
        help="the image to edit: a local file (uploaded first) or s3://bucket/key (required)",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="FILE|S3_URI",
        help="a reference image, same forms as --image; repeatable, at most "
        "KLEIN_EDIT_PIPELINE__MAX_REFERENCES (default: none)",
    )
    p.add_argument(
        "--prompt",
        metavar="TEXT",
        help="the edit instruction, 1-2000 characters; required unless --recolor is given (default: none)",
    )
    p.add_argument(
        "--recolor",
        action="append",
        default=[],
        metavar="TARGET=#HEX",
        help="recolour TARGET to #RRGGBB or #RGB, e.g. 'the sneakers=#1E90FF'; repeatable, at most 16 "
        "(default: none)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="denoising steps, an integer 25-50 (default: 50)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="SCALE",
        help="guidance scale, a number 0-30 (default: 4.0)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="random seed, an integer 0 to 2**63-1 (default: the worker picks one and reports it)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="PIXELS",
        help="output width in pixels, a multiple of 16, 64-4096, with --height (default: the input's "
        "size scaled to at most KLEIN_EDIT_PIPELINE__MAX_MEGAPIXELS)",
    )
    p.add_argument(
        "--height",
        type=int,
        default=None,
        metavar="PIXELS",
        help="output height in pixels, a multiple of 16, 64-4096, with --width (default: like --width, the "
        "input's size scaled to at most KLEIN_EDIT_PIPELINE__MAX_MEGAPIXELS)",
    )
    p.add_argument(
        "--format",
        choices=["png", "jpeg", "webp"],
        default=None,
        help="output image format: png, jpeg or webp (default: png)",
    )
    p.add_argument(
        "--output-uri",
        default=None,
        metavar="S3_URI",
        help="where the worker writes the output, inside its output bucket and prefix (default: "
        "s3://<output bucket>/edits/<request id>.<format>)",
    )
    p.add_argument(
        "--request-id",
        default=None,
        metavar="ID",
        help="the idempotency key, 1-128 characters of A-Za-z0-9._:- (default: req-<16 random hex>)",
    )
    p.add_argument(
        "--topic",
        default=None,
        metavar="TOPIC",
        help="the request topic, e.g. a priority lane (default: KLEIN_EDIT_KAFKA__REQUEST_TOPIC, "
        "edit.requests)",
    )
    p.add_argument(
        "--progress", action="store_true", help="ask the worker for progress events (default: off)"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the result and print it; exit 1 unless it succeeded (default: off)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="save the edited image to FILE; implies --wait (default: not saved)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=900.0,
        metavar="SECONDS",
        help="how long --wait waits for the result, in seconds, more than 0 (default: 900)",
    )

    p = command(
        "cancel",
        "ask the workers to cancel a request (skipped if queued, stopped between steps if running)",
        _cmd_cancel,
    )
    p.add_argument(
        "request_id", metavar="REQUEST_ID", help="the request's id, 1-128 characters of A-Za-z0-9._:-"
    )
    p.add_argument(
        "--reason",
        default=None,
        metavar="TEXT",
        help="why, for the logs, up to 500 characters (default: none)",
    )

    p = command(
        "schema",
        "print the JSON Schemas of the events (needs no configuration)",
        _cmd_schema,
    )
    p.add_argument(
        "--write",
        metavar="DIR",
        help="write one <event>.schema.json file per event into DIR (default: print them all as one "
        "JSON object)",
    )
    p.add_argument(
        "--asyncapi",
        action="store_true",
        help="the AsyncAPI 3.0 document of the five topics instead (with --write: DIR/asyncapi.yaml "
        "and the JSON Schemas it references in DIR/jsonschema/) (default: off)",
    )

    p = command(
        "fetch-model",
        "download the model weights into the Hugging Face cache (needs HF_TOKEN)",
        _cmd_fetch_model,
        description="Download the configured model into the Hugging Face cache, so that workers load it "
        "without network access.",
        epilog=FETCH_EPILOG,
    )
    p.add_argument(
        "--tiny-random",
        metavar="DIR",
        help="instead of downloading: write the offline tiny random-weight model (the same classes as the "
        "real one; for demos and tests) to directory DIR as a diffusers model directory; "
        "KLEIN_EDIT_PIPELINE__MODEL=DIR then loads it like any local model; a directory is treated as a "
        "real model and needs CUDA, so without a GPU also set KLEIN_EDIT_PIPELINE__DEVICE=cpu (default: "
        "not used)",
    )

    p = command("dlq", "dead-letter topic tools", _cmd_help_of("dlq"))
    dlq = p.add_subparsers(dest="dlq_command", required=True, metavar="DLQ_COMMAND")
    r = dlq.add_parser(
        "replay",
        help="re-publish dead-lettered requests to their original topics",
        description="Re-publish dead-lettered requests (KLEIN_EDIT_KAFKA__DLQ_TOPIC) to their original "
        "topics.",
        formatter_class=_HelpFormatter,
    )
    r.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="CODE",
        help="only records with this error code, e.g. STORAGE_UNAVAILABLE; repeatable (default: all codes)",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be replayed; publish and commit nothing (default: off)",
    )
    r.add_argument(
        "--group",
        default=None,
        metavar="NAME",
        help="remember what was replayed, per error code (groups NAME and NAME.<CODE>), so a rerun "
        "replays nothing twice (default: none, every record in the DLQ is replayed)",
    )
    r.set_defaults(handler=_cmd_dlq_replay)

    p = command(
        "bench",
        "benchmarks: orchestration (stand-in editor), adapters (LoRA costs), pipeline (random weights) or "
        "quality (option sets against bf16)",
        _cmd_help_of("bench"),
    )
    bench = p.add_subparsers(dest="bench_mode", required=True, metavar="MODE")
    b = bench.add_parser(
        "orchestration",
        help="GPU-thread duty cycle with real Kafka and S3, vs a serial loop",
        description="GPU-thread duty cycle with real Kafka and S3 and a stand-in editor, vs a serial loop "
        "(docs/benchmarks.md).",
        formatter_class=_HelpFormatter,
    )
    b.add_argument(
        "--jobs", type=_positive_int, default=40, metavar="N", help="requests, 1 or more (default: 40)"
    )
    b.add_argument(
        "--edit-ms",
        type=_positive_float,
        default=200.0,
        metavar="MS",
        help="GPU time of one stand-in edit, in milliseconds, more than 0 (default: 200)",
    )
    b.add_argument(
        "--image-mb",
        type=_positive_float,
        default=2.0,
        metavar="MB",
        help="size of each input image, in megabytes, more than 0 (default: 2)",
    )
    b.add_argument(
        "--no-embedded",
        action="store_true",
        help="use the configured Kafka and S3 instead of local ones (default: off)",
    )
    b.set_defaults(handler=_cmd_bench_orchestration)
    b = bench.add_parser(
        "adapters",
        help="LoRA adapter costs: host cache miss and hit, GPU load and switch (tiny model by default)",
        description="LoRA adapter costs on the production code paths: cache miss and hit against a local "
        "S3 server, cold load, resident switch and switch to none on the GPU thread (docs/benchmarks.md).",
        formatter_class=_HelpFormatter,
    )
    b.add_argument(
        "--rank", type=_positive_int, default=16, metavar="N", help="LoRA rank, 1 or more (default: 16)"
    )
    b.add_argument(
        "--repeats",
        type=_positive_int,
        default=10,
        metavar="N",
        help="runs per figure, 1 or more (default: 10)",
    )
    b.set_defaults(handler=_cmd_bench_adapters)
    b = bench.add_parser(
        "quality",
        help="PSNR, SSIM, LPIPS, passes and speed-up of option sets against bf16 with everything off",
        description="Runs each option set on the same images, prompts and seeds as the reference (bf16, "
        "everything off) with the configured model and compares the outputs (docs/benchmarks.md: the "
        "protocol; random weights cannot show the quality cost).",
        formatter_class=_HelpFormatter,
    )
    b.add_argument(
        "--option-sets",
        required=True,
        metavar="A,B",
        help="comma-separated, e.g. float8+compile,dbcache@0.12,interval@0.1-0.9,attn@sage (required)",
    )
    b.add_argument("--images", required=True, metavar="DIR", help="PNG/JPEG/WebP inputs (required)")
    b.add_argument("--prompts", required=True, metavar="FILE", help="one prompt per line (required)")
    b.add_argument("--seeds", default="0", metavar="0,1", help="comma-separated seeds (default: 0)")
    b.add_argument(
        "--steps",
        type=_positive_int,
        default=50,
        metavar="N",
        help="denoising steps, 1 or more (default: 50)",
    )
    b.add_argument(
        "--guidance", type=float, default=4.0, metavar="SCALE", help="guidance scale, 0 to 30 (default: 4.0)"
    )
    b.add_argument(
        "--size",
        type=_positive_int,
        default=1024,
        metavar="PIXELS",
        help="side of the square each input is fitted to, 1 or more (default: 1024)",
    )
    b.add_argument(
        "--max-lpips",
        type=float,
        default=0.05,
        metavar="SCALE",
        help="gate on mean LPIPS, 0 to 1 (default: 0.05)",
    )
    b.set_defaults(handler=_cmd_bench_quality)
    b = bench.add_parser(
        "pipeline",
        help="the real Flux2KleinPipeline code path with random weights (its options: bench pipeline --help)",
        add_help=False,
    )
    b.set_defaults(handler=_cmd_bench_pipeline)

    return parser


def _cmd_help_of(name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:  # pragma: no cover - the subparsers are required
        raise CommandFailed(f"choose a {name} command (see klein-edit {name} --help)", EXIT_USAGE)

    return handler


# -- the commands ---------------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    from consumer.app import build_worker, install_signal_handlers, serve
    from consumer.http.health import PortUnavailable
    from consumer.worker import KafkaAccessDenied
    from pipeline import ModelLoadError
    from pipeline.signing import SigningSetupError

    settings = configured(args)

    async def run() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await serve(build_worker(settings), stop)

    try:
        code = asyncio.run(run())
    except ModelLoadError as exc:
        raise CommandFailed(f"cannot load the model: {exc}", EXIT_MODEL) from exc
    except SigningSetupError as exc:
        raise CommandFailed(f"cannot sign outputs: {exc}", EXIT_USAGE) from exc
    except KafkaAccessDenied as exc:
        raise CommandFailed(str(exc), EXIT_UNREACHABLE) from exc
    except PortUnavailable as exc:
        raise CommandFailed(
            f"the health endpoint {exc} (another `klein-edit worker` on this machine?); set "
            "KLEIN_EDIT_WORKER__HTTP_PORT to a free port, 0 to pick a free one, or off to serve no "
            "/livez, /readyz, /metrics",
            EXIT_USAGE,
        ) from exc
    return _exit_promptly(code)


def _exit_promptly(code: int) -> int:
    """Exit now: the GPU lane's daemon thread may still be inside an abandoned edit, and tearing the
    interpreter down under a running CUDA kernel can crash; I/O threads may sit in an S3 timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cmd_demo(args: argparse.Namespace) -> int:
    from consumer.cli.demo import run_demo
    from consumer.cli.local_services import ServiceError
    from consumer.worker import KafkaAccessDenied
    from pipeline import ModelLoadError

    embedded = not args.no_embedded
    settings = configured(args, **(LOCAL_S3 if embedded else {}))
    try:
        return asyncio.run(
            run_demo(settings, out_dir=Path(args.out_dir), embedded=embedded, timeout_s=args.timeout)
        )
    except ModelLoadError as exc:
        raise CommandFailed(f"cannot load the model: {exc}", EXIT_MODEL) from exc
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from exc
    except KafkaAccessDenied as exc:
        raise CommandFailed(str(exc), EXIT_UNREACHABLE) from exc
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    except KleinEditError as exc:
        raise storage_failed(settings, exc) from exc
    except TimeoutError as exc:
        raise CommandFailed(f"{exc}; raise --timeout (seconds)") from exc


def _cmd_dev_up(args: argparse.Namespace) -> int:
    from consumer.cli.dev import DevServicesFailed, run_dev_services

    try:
        return run_dev_services(
            lambda **overrides: configured(args, **overrides),
            kafka_port=args.kafka_port,
            s3_port=args.s3_port,
        )
    except DevServicesFailed as exc:
        raise CommandFailed(str(exc)) from exc


def _cmd_submit(args: argparse.Namespace) -> int:
    from consumer.cli.submit import SubmitRejected, download, prepare_submission, submit
    from consumer.kafka.clients import TopicsMissing

    settings = configured(args)
    try:
        submission = prepare_submission(settings, args)
    except SubmitRejected as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from exc
    wait = args.wait or submission.out is not None
    topic = args.topic or settings.kafka.request_topic

    async def run() -> int:
        try:
            result = await submit(settings, submission, wait=wait, timeout_s=args.timeout, topic=topic)
        except TopicsMissing as exc:
            raise CommandFailed(str(exc), EXIT_USAGE) from exc
        except KafkaError as exc:
            raise kafka_unreachable(settings, exc) from exc
        except KleinEditError as exc:
            raise storage_failed(settings, exc) from exc
        except TimeoutError as exc:
            raise CommandFailed(
                f"{exc}; is a worker running (`klein-edit worker`) on {topic}? Raise --timeout (seconds) "
                "for a long edit"
            ) from exc
        if result is None:
            print(json.dumps({"submitted": submission.request.request_id, "topic": topic}))
            return 0
        print(result.model_dump_json(indent=2))
        if result.output is None:
            error = f" with {result.error.code}: {result.error.message}" if result.error else ""
            raise CommandFailed(
                f"edit {result.request_id} {result.status}{error} (the result event is on stdout)"
            )
        if submission.out is not None:
            try:
                await download(settings, result, submission.out)
            except KleinEditError as exc:
                raise storage_failed(settings, exc) from exc
            print(f"saved {result.output.uri} to {submission.out}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _cmd_cancel(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from consumer.cli.local_client import EditClient
    from consumer.cli.submit import describe_flag_errors
    from schemas.control import CancelRequested

    try:
        command = CancelRequested(
            request_id=args.request_id, requested_at=datetime.now(UTC), reason=args.reason
        )
    except ValidationError as exc:
        flags = {"request_id": "REQUEST_ID", "reason": "--reason"}
        raise CommandFailed(describe_flag_errors(exc, flags), EXIT_USAGE) from exc
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


def _cmd_schema(args: argparse.Namespace) -> int:
    from consumer.cli import asyncapi
    from schemas.export import json_schemas, write_published

    if args.asyncapi:
        if not args.write:
            print(asyncapi.asyncapi_yaml(), end="")
            return 0
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        written = [asyncapi.write_published(out), *write_published(out / "jsonschema")]
        print(f"wrote {len(written)} files to {out}")
        return 0
    schemas = json_schemas()
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        print(f"wrote {len(schemas)} schemas to {out}")
    else:
        print(json.dumps(schemas, indent=2))
    return 0


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    from pipeline import ModelLoadError
    from pipeline.tools.fetch import fetch_model

    if args.tiny_random:
        from pipeline.tiny import write_tiny_model

        print(write_tiny_model(args.tiny_random))
        return 0
    settings = configured(args, **NO_S3)
    p = settings.pipeline
    token = p.hf_token.get_secret_value() if p.hf_token else None
    try:
        if p.model == TINY_RANDOM:
            from pipeline.loader import locate_model

            path = str(locate_model(p))  # written into the cache on first use
        else:
            path = fetch_model(p.model, cache_dir=p.cache_dir, token=token, revision=p.revision)
    except ModelLoadError as exc:
        raise CommandFailed(str(exc), EXIT_MODEL) from exc
    print(path)
    return 0


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from consumer.cli.dlq import replay_dead_letters

    settings = configured(args, **NO_S3)
    try:
        summary = asyncio.run(
            replay_dead_letters(
                settings.kafka, codes=set(args.code), dry_run=args.dry_run, group_id=args.group
            )
        )
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    print(json.dumps(summary))
    return 0


def _cmd_bench_orchestration(args: argparse.Namespace) -> int:
    from consumer.cli.bench import print_orchestration_summary, run_orchestration_benchmark
    from consumer.cli.local_services import ServiceError
    from consumer.worker import KafkaAccessDenied

    settings = configured(args, **({} if args.no_embedded else LOCAL_S3))
    try:
        summary = asyncio.run(
            run_orchestration_benchmark(
                settings,
                jobs=args.jobs,
                edit_ms=args.edit_ms,
                image_mb=args.image_mb,
                embedded=not args.no_embedded,
            )
        )
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from exc
    except KafkaAccessDenied as exc:
        raise CommandFailed(str(exc), EXIT_UNREACHABLE) from exc
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    except KleinEditError as exc:
        raise storage_failed(settings, exc) from exc
    print_orchestration_summary(summary)
    return 0


def _cmd_bench_adapters(args: argparse.Namespace) -> int:
    from consumer.cli.adapter_bench import print_adapter_summary, run_adapter_benchmark
    from consumer.cli.local_services import ServiceError
    from pipeline import ModelLoadError

    settings = configured(args, **LOCAL_S3)
    try:
        summary = run_adapter_benchmark(settings.pipeline, rank=args.rank, repeats=args.repeats)
    except (ServiceError, ModelLoadError) as exc:
        raise CommandFailed(str(exc)) from exc
    print_adapter_summary(summary)
    return 0


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from pipeline import ModelLoadError
    from pipeline.tools.quality import load_cases, print_quality_summary, run_quality_benchmark

    settings = configured(args, **NO_S3)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        cases = load_cases(Path(args.images), Path(args.prompts), seeds, args.size)
        summary = run_quality_benchmark(
            settings.pipeline,
            [name for name in args.option_sets.split(",") if name.strip()],
            cases,
            steps=args.steps,
            guidance=args.guidance,
            max_lpips=args.max_lpips,
        )
    except ImportError as exc:
        raise CommandFailed(
            f"needs scikit-image for PSNR and SSIM: pip install 'klein-edit[quality]' ({exc})"
        ) from exc
    except (ValueError, OSError, ModelLoadError) as exc:
        raise CommandFailed(str(exc)) from exc
    print_quality_summary(summary)
    return 0


def _cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from pipeline.tools.bench import main as pipeline_bench

    return pipeline_bench(list(args.passthrough), prog="klein-edit bench pipeline")

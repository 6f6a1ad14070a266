"""The `klein-edit` console script: worker, demo, submit, schema, fetch-model, dlq, bench.

This is the only entry point: it builds `Settings` once from the environment and passes it down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from consumer.logs import configure_logging
from consumer.settings import Settings
from schemas.errors import KleinEditError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # `bench pipeline` passes its own options through to `python -m pipeline.bench`.
    args, extra = parser.parse_known_args(argv)
    if extra and args.handler is not _cmd_bench_pipeline:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        print(f"klein-edit: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(format=settings.log.format, level=settings.log.level)
    try:
        code: int = args.handler(settings, args)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klein-edit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="consume edit requests until SIGTERM")
    p.set_defaults(handler=_cmd_worker)

    p = sub.add_parser("demo", help="run one recolour edit end to end on embedded services")
    p.add_argument("--out-dir", default="demo-output", help="where the edited image is saved")
    p.add_argument("--no-embedded", action="store_true", help="use the configured Kafka and S3 endpoints")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("submit", help="publish one edit request built from flags")
    p.add_argument("--image", required=True, help="s3://bucket/key, a bare key, or a local file to upload")
    p.add_argument("--reference", action="append", default=[], help="repeatable; same forms as --image")
    p.add_argument("--prompt")
    p.add_argument("--recolor", action="append", default=[], metavar="TARGET=#HEX", help="repeatable")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default=None)
    p.add_argument("--output-uri", default=None)
    p.add_argument("--request-id", default=None)
    p.add_argument("--topic", default=None, help="request topic (default: the configured one)")
    p.add_argument("--progress", action="store_true", help="ask for progress events")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--timeout", type=float, default=900.0)
    p.set_defaults(handler=_cmd_submit)

    p = sub.add_parser("schema", help="print the JSON Schemas of the wire events")
    p.add_argument("--write", metavar="DIR", help="write one file per event instead of printing")
    p.add_argument(
        "--asyncapi",
        action="store_true",
        help="the AsyncAPI 3.0 document of the five topics instead (with --write: DIR/asyncapi.yaml "
        "and the JSON Schemas it references in DIR/jsonschema/)",
    )
    p.set_defaults(handler=_cmd_schema)

    p = sub.add_parser("fetch-model", help="download the model weights into the Hugging Face cache")
    p.set_defaults(handler=_cmd_fetch_model)

    p = sub.add_parser("dlq", help="dead-letter topic tools")
    dlq = p.add_subparsers(dest="dlq_command", required=True)
    r = dlq.add_parser("replay", help="re-publish dead-lettered requests to their original topics")
    r.add_argument("--code", action="append", default=[], help="only records with this error code")
    r.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; publish and commit nothing"
    )
    r.add_argument(
        "--group",
        default=None,
        help="remember what was replayed, per error code (groups GROUP and GROUP.<CODE>), so a rerun "
        "replays nothing twice; without it every record in the DLQ is replayed",
    )
    r.set_defaults(handler=_cmd_dlq_replay)

    p = sub.add_parser("cancel", help="ask workers to cancel a request (skipped or stopped between steps)")
    p.add_argument("request_id")
    p.add_argument("--reason", default=None)
    p.set_defaults(handler=_cmd_cancel)

    p = sub.add_parser(
        "bench", help="benchmarks: orchestration (stand-in editor) or pipeline (random weights)"
    )
    bench = p.add_subparsers(dest="bench_mode", required=True)
    b = bench.add_parser(
        "orchestration", help="GPU-thread duty cycle with real Kafka and S3, vs a serial loop"
    )
    b.add_argument("--jobs", type=int, default=40)
    b.add_argument("--edit-ms", type=float, default=200.0)
    b.add_argument("--image-mb", type=float, default=2.0)
    b.add_argument("--no-embedded", action="store_true", help="use the configured Kafka and S3 endpoints")
    b.set_defaults(handler=_cmd_bench_orchestration)
    b = bench.add_parser(
        "pipeline", help="the real Flux2KleinPipeline code path with random weights", add_help=False
    )
    b.set_defaults(handler=_cmd_bench_pipeline)

    return parser


def _cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from consumer.client import EditClient
    from schemas.control import CancelRequested

    try:
        command = CancelRequested(
            request_id=args.request_id, requested_at=datetime.now(UTC), reason=args.reason
        )
    except ValidationError as exc:
        print(f"klein-edit cancel: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2

    async def send() -> None:
        async with EditClient(settings.kafka) as client:
            await client.cancel(command)

    asyncio.run(send())
    print(json.dumps({"canceled": command.request_id, "topic": settings.kafka.control_topic}))
    return 0


def _cmd_bench_orchestration(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.bench import print_orchestration_summary, run_orchestration_benchmark

    summary = asyncio.run(
        run_orchestration_benchmark(
            settings,
            jobs=args.jobs,
            edit_ms=args.edit_ms,
            image_mb=args.image_mb,
            embedded=not args.no_embedded,
        )
    )
    print_orchestration_summary(summary)
    return 0


def _cmd_bench_pipeline(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.bench import main as pipeline_bench

    return pipeline_bench(list(args.passthrough))


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.app import build_worker, install_signal_handlers, serve
    from consumer.worker import BrokerUnreachable
    from pipeline import ModelLoadError

    async def run() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await serve(build_worker(settings), stop)

    try:
        code = asyncio.run(run())
    except ModelLoadError as exc:
        print(f"klein-edit: cannot load the model: {exc}", file=sys.stderr)
        return 3
    except BrokerUnreachable as exc:
        print(f"klein-edit: {exc}", file=sys.stderr)
        return 4
    return _exit_promptly(code)


def _exit_promptly(code: int) -> int:
    """Exit now: the GPU lane's daemon thread may still be inside an abandoned edit, and tearing the
    interpreter down under a running CUDA kernel can crash; I/O threads may sit in an S3 timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.cli.demo import run_demo
    from consumer.services import ServiceError
    from pipeline import ModelLoadError

    try:
        return asyncio.run(
            run_demo(
                settings, out_dir=Path(args.out_dir), embedded=not args.no_embedded, timeout_s=args.timeout
            )
        )
    except ModelLoadError as exc:
        print(f"klein-edit demo: cannot load the model: {exc}", file=sys.stderr)
        return 3
    except (KleinEditError, ServiceError) as exc:
        print(f"klein-edit demo: {exc}", file=sys.stderr)
        return 1


def _cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.cli.submit import build_request, submit

    try:
        request = build_request(settings, args)
    except (ValueError, KleinEditError) as exc:
        print(f"klein-edit submit: {exc}", file=sys.stderr)
        return 2
    from consumer.kafka import TopicsMissing

    try:
        result = asyncio.run(
            submit(settings, request, wait=args.wait, timeout_s=args.timeout, topic=args.topic)
        )
    except TopicsMissing as exc:
        print(f"klein-edit submit: {exc}", file=sys.stderr)
        return 2
    if result is None:
        print(
            json.dumps({"submitted": request.request_id, "topic": args.topic or settings.kafka.request_topic})
        )
        return 0
    print(result.model_dump_json(indent=2))
    return 0 if result.status.value == "succeeded" else 1


def _cmd_schema(settings: Settings, args: argparse.Namespace) -> int:
    from consumer import asyncapi
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


def _cmd_fetch_model(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline import ModelLoadError
    from pipeline.fetch import fetch_model

    p = settings.pipeline
    token = p.hf_token.get_secret_value() if p.hf_token else None
    try:
        path = fetch_model(p.model, cache_dir=p.cache_dir, token=token, revision=p.revision)
    except ModelLoadError as exc:
        print(f"klein-edit fetch-model: {exc}", file=sys.stderr)
        return 3
    print(path)
    return 0


def _cmd_dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.dlq import replay_dead_letters

    summary = asyncio.run(
        replay_dead_letters(settings.kafka, codes=set(args.code), dry_run=args.dry_run, group_id=args.group)
    )
    print(json.dumps(summary))
    return 0

"""`klein-edit demo`: the whole product in one command, on embedded defaults.

Starts a Tansu broker and a moto S3 server (unless told to use configured endpoints), uploads the
bundled product shot, publishes a recolour request, runs the worker (the offline tiny model on the CPU
unless a model is configured), prints the result event, saves the image, and stops what it started.

The worker runtime, the Kafka and S3 clients and the embedded services are imported when the demo
runs, not with this module: the parser is built from it on every `klein-edit --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from consumer.cli.command import (
    CommandFailed,
    add_command,
    configured,
    kafka_unreachable,
    positive_float,
    storage_failed,
)
from pipeline.config import TINY_RANDOM
from pipeline.errors import ModelLoadError
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER
from schemas.errors import KleinEditError
from schemas.requests import EditRequest, RecolorInstruction

if TYPE_CHECKING:
    from consumer.settings import Settings

SAMPLE_ASSET = "sneaker.png"
REAL_MODEL_SECTION = "Running the real model"
DEMO_RECOLOR = RecolorInstruction(target="the sneaker", color="#1E90FF")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "demo",
        "run one recolour edit end to end on a local Kafka and S3, then stop",
        description="Start a local Kafka broker (Tansu) and S3 server (moto), upload a bundled product shot, "
        f"recolour it with the worker ({TINY_RANDOM} random weights on the CPU unless "
        "KLEIN_EDIT_PIPELINE__MODEL is set: the output is noise by design), save input and output, "
        "and stop everything.",
    )
    parser.add_argument(
        "--out-dir",
        metavar="DIR",
        default="demo-output",
        help="where the input and the edited image are saved (default: demo-output)",
    )
    parser.add_argument(
        "--no-embedded",
        action="store_true",
        help="use the configured Kafka and S3 (KLEIN_EDIT_KAFKA__*, KLEIN_EDIT_S3__*) instead of local "
        "ones (default: off, local ones are started)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=600.0,
        help="how long to wait for the result, in seconds, more than 0 (default: 600)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from consumer.cli.local_services import LOCAL_S3, ServiceError
    from consumer.worker import KafkaAccessDenied

    embedded = not args.no_embedded
    settings = configured(args, **(LOCAL_S3 if embedded else {}))
    try:
        return asyncio.run(
            run_demo(settings, out_dir=Path(args.out_dir), embedded=embedded, timeout_s=args.timeout)
        )
    except ModelLoadError as exc:
        raise CommandFailed(f"cannot load the model: {exc}") from exc
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from exc
    except KafkaAccessDenied as exc:
        raise CommandFailed(str(exc)) from exc
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    except KleinEditError as exc:
        raise storage_failed(settings, exc) from exc
    except TimeoutError as exc:
        raise CommandFailed(f"{exc}; raise --timeout (seconds)") from exc


class _Progress:
    def __init__(self) -> None:
        self._started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self._started:6.1f}s] {message}", flush=True)


def demo_settings(settings: Settings, *, bootstrap: str | None, s3_endpoint: str | None) -> Settings:
    """The configured settings with the demo's defaults filled in where nothing was configured."""
    from consumer.cli.local_services import on_local_services

    pipeline = settings.pipeline
    if "model" not in pipeline.model_fields_set:
        pipeline = pipeline.model_copy(update={"model": TINY_RANDOM, "device": "cpu", "warmup": False})
    moderation = settings.moderation
    if "model" not in moderation.model_fields_set:
        moderation = moderation.model_copy(update={"model": TINY_IMAGE_CLASSIFIER})
    worker = settings.worker.model_copy(update={"http_port": None})
    kafka = settings.kafka.model_copy(update={"create_topics": True})  # the demo brings its own topics
    settings = settings.model_copy(
        update={"pipeline": pipeline, "worker": worker, "kafka": kafka, "moderation": moderation}
    )
    return on_local_services(settings, bootstrap=bootstrap, s3_endpoint=s3_endpoint)


async def run_demo(settings: Settings, *, out_dir: Path, embedded: bool, timeout_s: float) -> int:
    from consumer.cli.local_services import MotoServer, TansuBroker

    say = _Progress()
    with contextlib.ExitStack() as services:
        bootstrap = s3_endpoint = None
        if embedded:
            say("starting the embedded Kafka broker (Tansu)")
            broker = services.enter_context(TansuBroker())
            bootstrap = broker.bootstrap_servers
            say("starting the embedded S3 server (moto)")
            s3_server = services.enter_context(MotoServer())
            s3_endpoint = s3_server.endpoint_url
        settings = demo_settings(settings, bootstrap=bootstrap, s3_endpoint=s3_endpoint)
        return await _run(settings, out_dir=out_dir, timeout_s=timeout_s, say=say)


async def _run(settings: Settings, *, out_dir: Path, timeout_s: float, say: _Progress) -> int:
    from consumer.app import build_worker
    from consumer.cli.local_client import EditClient
    from consumer.kafka import clients as kafka_io
    from storage import ImageStore, S3Location

    kafka, s3 = settings.kafka, settings.s3
    say(f"Kafka at {kafka.bootstrap_servers}, S3 at {s3.endpoint_url or 'AWS'}")
    store = ImageStore(s3)
    loop = asyncio.get_running_loop()
    for bucket in (s3.input_bucket, s3.output_bucket):
        await loop.run_in_executor(None, store.ensure_bucket, bucket)
    await kafka_io.ensure_topics(
        kafka, [*kafka.request_topics, kafka.result_topic, kafka.dlq_topic, kafka.progress_topic]
    )

    sample = resources.files("consumer.assets").joinpath(SAMPLE_ASSET).read_bytes()
    image = S3Location(s3.input_bucket, f"demo/{SAMPLE_ASSET}")
    await loop.run_in_executor(None, lambda: store.put_object(image, sample, content_type="image/png"))
    say(f"uploaded the sample product shot to {image.uri}")

    request = EditRequest(
        request_id=f"demo-{int(time.time())}",
        image=image.uri,
        recolor=[DEMO_RECOLOR],
        num_inference_steps=25,
        seed=42,
        metadata={"source": "klein-edit demo"},
    )
    say(
        f"loading the model {settings.pipeline.model!r} on {settings.pipeline.device} and starting the worker"
    )
    worker = build_worker(settings)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop), name="demo-worker")
    try:
        async with EditClient(kafka) as client:
            await client.watch_results()
            await client.submit(request)
            say(
                f"published request {request.request_id} to {kafka.request_topic}: "
                f"{request.compiled_prompt!r}"
            )
            say("waiting for the result (the first rebalance of a new group takes a few seconds)")
            waiter = asyncio.create_task(client.wait_for(request.request_id, timeout_s=timeout_s))
            done, _ = await asyncio.wait({waiter, worker_task}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                worker_task.result()  # surfaces the worker's exception, if any
                raise RuntimeError("the worker stopped before the result arrived")
            result = waiter.result()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
    print(result.model_dump_json(indent=2), flush=True)
    if result.output is None:
        say(f"the edit {result.status.value}: {result.error.message if result.error else ''}")
        return 1
    output = S3Location(*result.output.uri.removeprefix("s3://").split("/", 1))
    data = await loop.run_in_executor(None, store.fetch, output)
    saved = out_dir / f"{request.request_id}.{result.output.format.extension}"
    await loop.run_in_executor(None, _save, saved, data)
    original = out_dir / f"{request.request_id}.input.png"
    await loop.run_in_executor(None, _save, original, sample)
    say(
        f"output object: {result.output.uri} ({result.output.width}x{result.output.height}, "
        f"{result.output.bytes} bytes, ${result.cost.usd})"
    )
    say(f"saved the input to  {original.resolve()}")
    say(f"saved the output to {saved.resolve()}")
    if settings.pipeline.model == TINY_RANDOM:
        say(
            f"the output is noise by design: '{TINY_RANDOM}' runs the real pipeline code with random "
            f"weights. For real edits see README.md, section '{REAL_MODEL_SECTION}'"
        )
    say("stopping the worker and the embedded services")
    return 0


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

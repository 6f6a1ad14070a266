"""Wiring: build the worker's collaborators from `Settings` and run it with signals and health."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable

import structlog

from consumer import __version__
from consumer.http.health import HealthServer
from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState
from consumer.settings import Settings
from consumer.worker import EditWorker
from pipeline import Editor, KleinEditor
from storage import AttemptLedger, ImageStore, StorageError

# How often a worker whose output bucket is missing looks again (seconds, jittered by +-20 %).
OUTPUT_BUCKET_RETRY_S = 5.0
# While it stays missing or unreachable, the problem is logged again this often (seconds, +-20 %).
OUTPUT_BUCKET_LOG_S = 30.0
OUTPUT_BUCKET_PROBLEM = "output_bucket"

log = structlog.get_logger("klein_edit.app")


def build_worker(settings: Settings, *, editor_factory: Callable[[], Editor] | None = None) -> EditWorker:
    store = ImageStore(settings.s3)
    return EditWorker(
        settings,
        editor_factory=editor_factory or (lambda: KleinEditor.load(settings.pipeline)),
        store=store,
        ledger=AttemptLedger(store, settings.s3),
        metrics=WorkerMetrics(model=settings.pipeline.model, model_revision=settings.pipeline.revision),
    )


async def serve(worker: EditWorker, stop: asyncio.Event) -> int:
    """Run the worker with its health endpoint until `stop` is set; returns the exit code.

    Before the worker consumes, the output bucket must exist: until it does the worker stays not
    ready (/readyz 503) and says so in the log, rather than edit every request and dead-letter it. The
    model loads meanwhile (`EditWorker.run`), so an S3 outage at deploy time does not delay it.
    """
    settings = worker.settings
    log.info(
        "worker.starting",
        version=__version__,
        worker=settings.worker.name,
        model=settings.pipeline.model,
        output_bucket=settings.s3.output_bucket,
    )
    health: HealthServer | None = None
    if settings.worker.http_port is not None:
        health = HealthServer(
            worker.state, worker.metrics, host=settings.worker.http_host, port=settings.worker.http_port
        )
        await health.start()
        log.info("http.listening", port=health.port)
    try:
        store = ImageStore(settings.s3)

        async def output_bucket(stop: asyncio.Event) -> bool:
            return await wait_for_output_bucket(store, settings.s3.output_bucket, stop, worker.state)

        return await worker.run(stop, before_consuming=output_bucket)
    finally:
        if health is not None:
            await health.stop()


async def wait_for_output_bucket(
    store: ImageStore, bucket: str, stop: asyncio.Event, state: WorkerState
) -> bool:
    """Return True once `bucket` exists, False if `stop` is set first. Meanwhile the problem is on
    /readyz (`state.problems["output_bucket"]`) and in the log: one line when it starts or changes,
    again every `OUTPUT_BUCKET_LOG_S` (jittered) while it lasts, and one when the bucket appears;
    looks again every `OUTPUT_BUCKET_RETRY_S` seconds."""
    reported: str | None = None
    started = time.monotonic()
    log_again_at = 0.0
    while not stop.is_set():
        try:
            if await asyncio.to_thread(store.bucket_exists, bucket):
                state.problems.pop(OUTPUT_BUCKET_PROBLEM, None)
                if reported is not None:
                    log.info("storage.output_bucket_found", bucket=bucket)
                return True
            problem = (
                f"the output bucket s3://{bucket} does not exist: create it, or set "
                "KLEIN_EDIT_S3__OUTPUT_BUCKET; not ready until then"
            )
        except StorageError as exc:
            problem = f"cannot check the output bucket s3://{bucket}: {exc}; not ready until it answers"
        state.problems[OUTPUT_BUCKET_PROBLEM] = problem
        if problem != reported or time.monotonic() >= log_again_at:
            waited = round(time.monotonic() - started, 1)
            log.error("storage.output_bucket_unusable", bucket=bucket, error=problem, waited_s=waited)
            reported = problem
            log_again_at = time.monotonic() + OUTPUT_BUCKET_LOG_S * random.uniform(0.8, 1.2)
        delay = OUTPUT_BUCKET_RETRY_S * random.uniform(0.8, 1.2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
    return False


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT start a graceful drain instead of killing the process mid-edit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

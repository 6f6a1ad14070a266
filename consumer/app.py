"""Wiring: build the worker's collaborators from `Settings` and run it with signals and health."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

from consumer.health import HealthServer
from consumer.metrics import WorkerMetrics
from consumer.settings import Settings
from consumer.worker import EditWorker
from pipeline import Editor, KleinEditor
from storage import AttemptLedger, ImageStore

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
    """Run the worker with its health endpoint until `stop` is set; returns the exit code."""
    settings = worker.settings
    health: HealthServer | None = None
    if settings.worker.http_port is not None:
        health = HealthServer(
            worker.state, worker.metrics, host=settings.worker.http_host, port=settings.worker.http_port
        )
        await health.start()
        log.info("http.listening", port=health.port)
    try:
        return await worker.run(stop)
    finally:
        if health is not None:
            await health.stop()


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT start a graceful drain instead of killing the process mid-edit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

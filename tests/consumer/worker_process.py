"""A real worker process for the fault tests (kills, signals, rebalances), with a chosen editor.

    python -m tests.consumer.worker_process standin:EDIT_MS     # StandInEditor holding the GPU thread
    python -m tests.consumer.worker_process tiny                # the tiny random-weight model
    python -m tests.consumer.worker_process crash-on:REQUEST_ID # os._exit(137) when that request is edited
    python -m tests.consumer.worker_process device-failure-on:TEXT  # a sticky CUDA error for that request

Settings come from KLEIN_EDIT_* like the real `klein-edit worker`; only the editor is injected, through
the same `editor_factory` seam the tests use in-process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

from consumer.app import build_worker, install_signal_handlers, serve
from consumer.logs import configure_logging
from consumer.settings import Settings
from pipeline import DeviceFailure, EditJob, Editor, KleinEditor, StandInEditor


def editor_factory(spec: str, settings: Settings) -> Callable[[], Editor]:
    kind, _, arg = spec.partition(":")
    if kind == "standin":
        return lambda: StandInEditor(edit_ms=float(arg))
    if kind == "tiny":
        return lambda: KleinEditor.load(settings.pipeline)
    if kind == "crash-on":

        def crash(job: EditJob) -> None:
            if arg in job.prompt:
                # Mid-edit, as an OOM kill or a segfault in a CUDA kernel would be: long enough for the
                # records behind it to be fetched and queued for the GPU (they must not be blamed).
                time.sleep(1.5)
                os._exit(137)

        return lambda: StandInEditor(edit_ms=50, fault=crash)
    if kind == "device-failure-on":

        def sticky(job: EditJob) -> None:
            if arg in job.prompt:
                raise DeviceFailure("CUDA error: an illegal memory access was encountered (injected)")

        return lambda: StandInEditor(edit_ms=50, fault=sticky)
    raise SystemExit(f"unknown editor spec {spec!r}")


def main() -> int:
    settings = Settings()
    configure_logging(format="json", level="INFO")
    factory = editor_factory(sys.argv[1], settings)

    async def run() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await serve(build_worker(settings, editor_factory=factory), stop)

    code = asyncio.run(run())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # don't wait for a GPU thread still inside an abandoned edit


if __name__ == "__main__":
    main()

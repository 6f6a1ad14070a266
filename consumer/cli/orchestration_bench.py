"""`klein-edit bench orchestration`: does the GPU ever wait for I/O?

A stand-in editor holds the GPU thread for a fixed time per edit, so every millisecond the GPU thread
is idle between edits is the worker's own overhead (Kafka, S3, decoding, encoding, commits). The same
backlog runs twice on a real broker and a real S3 server: through the overlapped worker
(`max_in_flight` records in flight) and through the plain serial loop (one record at a time:
fetch -> edit -> upload -> publish -> commit), and both are reported side by side; a third run repeats
the overlapped one with progress events on for every request, to measure what they cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from consumer.app import build_worker
from consumer.cli.local_client import EditClient
from consumer.cli.local_services import MotoServer, TansuBroker, on_local_services
from consumer.kafka import clients as kafka_io
from consumer.settings import Settings
from pipeline import AdapterWeights, EditJob, EditOutput, ModelIdentity, StandInEditor
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER
from schemas.requests import EditRequest, RecolorInstruction
from storage import ImageStore, S3Location


@dataclass
class _EditSpans:
    """Start and end of every edit on the GPU thread."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _TimedEditor:
    def __init__(self, inner: StandInEditor, spans: _EditSpans) -> None:
        self._inner = inner
        self._spans = spans

    @property
    def model_name(self) -> str:
        return self._inner.model_name

    @property
    def identity(self) -> ModelIdentity:
        return self._inner.identity

    def edit(self, job: EditJob) -> EditOutput:
        start = time.perf_counter()
        try:
            return self._inner.edit(job)
        finally:
            with self._spans.lock:
                self._spans.spans.append((start, time.perf_counter()))

    def check_prompt(self, prompt: str) -> None:
        self._inner.check_prompt(prompt)

    def uses_guidance(self, guidance_scale: float) -> bool:
        return self._inner.uses_guidance(guidance_scale)

    def parse_adapter(self, data: bytes, *, name: str) -> AdapterWeights:
        return self._inner.parse_adapter(data, name=name)

    def warm_up(self) -> None:
        self._inner.warm_up()

    def memory_stats(self) -> dict[str, float]:
        return self._inner.memory_stats()

    @property
    def recompiles_after_ready(self) -> int:
        return self._inner.recompiles_after_ready


def noise_png(target_bytes: int, seed: int) -> bytes:
    """A PNG of about `target_bytes` (noise does not compress, so side ~ sqrt(bytes / 3))."""
    side = max(64, int((target_bytes / 3) ** 0.5) // 16 * 16)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


async def _run_once(
    settings: Settings,
    *,
    jobs: int,
    edit_ms: float,
    image_uris: list[str],
    max_in_flight: int,
    progress: bool = False,
    recolor: bool = False,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    kafka = settings.kafka.model_copy(
        update={
            "group_id": f"bench-{tag}",
            "request_topic": f"bench-{tag}.requests",
            "result_topic": f"bench-{tag}.results",
            "dlq_topic": f"bench-{tag}.dlq",
            "control_topic": f"bench-{tag}.control",
            "progress_topic": f"bench-{tag}.progress",
            "priority_topics": [],
            "create_topics": True,  # throwaway topics of this run
        }
    )
    worker_settings = settings.worker.model_copy(
        update={"max_in_flight": max_in_flight, "http_port": None, "progress": progress}
    )
    run_settings = settings.model_copy(update={"kafka": kafka, "worker": worker_settings})
    await kafka_io.ensure_topics(kafka, [kafka.request_topic, kafka.result_topic, kafka.dlq_topic])
    spans = _EditSpans()
    worker = build_worker(
        run_settings, editor_factory=lambda: _TimedEditor(StandInEditor(edit_ms=edit_ms), spans)
    )
    async with EditClient(kafka) as client:
        await client.watch_results()
        # The backlog is published before the worker starts, as after an outage or a burst.
        requests = [
            EditRequest(
                request_id=f"bench-{tag}-{i}",
                image=image_uris[i % len(image_uris)],
                prompt=None if recolor else "recolor the product to #1E90FF",
                recolor=[RecolorInstruction(target="the product", color="#1E90FF")] if recolor else None,
                num_inference_steps=25,
                seed=i,
            )
            for i in range(jobs)
        ]
        for request in requests:
            await client.submit(request)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        started = time.perf_counter()
        try:
            seen: set[str] = set()
            for request in requests:
                if request.request_id not in seen:
                    result = await client.wait_for(request.request_id, timeout_s=600)
                    if result.status.value != "succeeded":
                        raise RuntimeError(f"bench edit failed: {result.error}")
                    seen.add(request.request_id)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finished = time.perf_counter()
    ordered = sorted(spans.spans)
    busy = sum(end - start for start, end in ordered)
    window = ordered[-1][1] - ordered[0][0]
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(ordered)]
    return {
        "jobs": jobs,
        "max_in_flight": max_in_flight,
        "gpu_duty_cycle": busy / window if window > 0 else 0.0,
        "overhead_ms_per_edit": (window - busy) / max(1, len(ordered) - 1) * 1000.0,
        "max_gap_ms": max(gaps) * 1000.0 if gaps else 0.0,
        "edits_per_s": len(ordered) / window if window > 0 else 0.0,
        "wall_s": finished - started,
    }


async def run_orchestration_benchmark(
    settings: Settings, *, jobs: int, edit_ms: float, image_mb: float, embedded: bool
) -> dict[str, Any]:
    with contextlib.ExitStack() as services:
        if embedded:
            broker = services.enter_context(TansuBroker())
            s3_server = services.enter_context(MotoServer())
            settings = on_local_services(
                settings, bootstrap=broker.bootstrap_servers, s3_endpoint=s3_server.endpoint_url
            )
        if "model" not in settings.moderation.model_fields_set:
            # The random-weight classifier of the real class unless one is configured (it runs on the CPU).
            moderation = settings.moderation.model_copy(update={"model": TINY_IMAGE_CLASSIFIER})
            settings = settings.model_copy(update={"moderation": moderation})
        store = ImageStore(settings.s3)
        for bucket in (settings.s3.input_bucket, settings.s3.output_bucket):
            store.ensure_bucket(bucket)
        images = [noise_png(int(image_mb * 1_000_000), seed) for seed in range(4)]
        uris = []
        for i, data in enumerate(images):
            location = S3Location(settings.s3.input_bucket, f"bench/noise-{i}.png")
            store.put_object(location, data, content_type="image/png")
            uris.append(location.uri)
        overlapped = await _run_once(
            settings, jobs=jobs, edit_ms=edit_ms, image_uris=uris, max_in_flight=settings.worker.max_in_flight
        )
        serial = await _run_once(settings, jobs=jobs, edit_ms=edit_ms, image_uris=uris, max_in_flight=1)
        # The same overlapped run with progress events on for every request: their cost, measured.
        with_progress = await _run_once(
            settings,
            jobs=jobs,
            edit_ms=edit_ms,
            image_uris=uris,
            max_in_flight=settings.worker.max_in_flight,
            progress=True,
        )
        # And with every request a recolour: the colour check runs after each edit, off the GPU thread.
        with_color_check = await _run_once(
            settings,
            jobs=jobs,
            edit_ms=edit_ms,
            image_uris=uris,
            max_in_flight=settings.worker.max_in_flight,
            recolor=True,
        )
    return {
        "mode": "orchestration",
        "jobs": jobs,
        "edit_ms": edit_ms,
        "image_bytes": len(images[0]),
        "max_in_flight": overlapped["max_in_flight"],
        "gpu_duty_cycle": round(overlapped["gpu_duty_cycle"], 4),
        "overhead_ms_per_edit": round(overlapped["overhead_ms_per_edit"], 2),
        "max_gap_ms": round(overlapped["max_gap_ms"], 2),
        "edits_per_s": round(overlapped["edits_per_s"], 3),
        "serial_gpu_duty_cycle": round(serial["gpu_duty_cycle"], 4),
        "serial_overhead_ms_per_edit": round(serial["overhead_ms_per_edit"], 2),
        "serial_edits_per_s": round(serial["edits_per_s"], 3),
        "progress_gpu_duty_cycle": round(with_progress["gpu_duty_cycle"], 4),
        "progress_overhead_ms_per_edit": round(with_progress["overhead_ms_per_edit"], 2),
        "color_check_gpu_duty_cycle": round(with_color_check["gpu_duty_cycle"], 4),
        "color_check_overhead_ms_per_edit": round(with_color_check["overhead_ms_per_edit"], 2),
    }


def print_orchestration_summary(summary: dict[str, Any]) -> None:
    print(
        f"orchestration: {summary['jobs']} edits of {summary['edit_ms']:.0f} ms, "
        f"{summary['image_bytes'] / 1e6:.1f} MB images\n"
        f"  overlapped (max_in_flight={summary['max_in_flight']}): GPU busy {summary['gpu_duty_cycle']:.2%}, "
        f"{summary['overhead_ms_per_edit']:.1f} ms overhead/edit, {summary['edits_per_s']:.2f} edits/s\n"
        f"  serial:{'':19}GPU busy {summary['serial_gpu_duty_cycle']:.2%}, "
        f"{summary['serial_overhead_ms_per_edit']:.1f} ms overhead/edit, "
        f"{summary['serial_edits_per_s']:.2f} edits/s\n"
        f"  overlapped + progress events: GPU busy {summary['progress_gpu_duty_cycle']:.2%}, "
        f"{summary['progress_overhead_ms_per_edit']:.1f} ms overhead/edit\n"
        f"  overlapped, recolours with the colour check: GPU busy "
        f"{summary['color_check_gpu_duty_cycle']:.2%}, {summary['color_check_overhead_ms_per_edit']:.1f} ms "
        "overhead/edit"
    )
    print(json.dumps(summary))

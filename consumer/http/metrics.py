"""Prometheus metrics of one worker, on a registry of its own (so tests can run several workers).

Every metric can be summed across its labels and across pods: the end-to-end time has its own
histogram instead of sitting beside its parts as one more "stage", and the two GPU memory quantities
(in use now, peak since start) are two gauges. The registry also carries the standard process
(`process_*`: CPU, resident memory, open file descriptors, start time) and platform
(`python_info`) collectors, and `klein_edit_build_info`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from schemas.errors import ErrorCode
from schemas.results import EditCompleted

if TYPE_CHECKING:  # the pipeline package imports torch; metrics are also used by light commands
    from pipeline import ModelIdentity

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600)
_END_TO_END_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)


def package_version() -> str:
    """The installed klein-edit version, or "unknown" when run from a bare source tree."""
    try:
        return version("klein-edit")
    except PackageNotFoundError:
        return "unknown"


class WorkerMetrics:
    def __init__(self, *, model: str = "", model_revision: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            "klein_edit_build_info",
            "Always 1: the klein-edit version and the model this worker runs: its id, its revision (before "
            "the model is loaded: pipeline.revision, 'unpinned' when not set; after: the resolved one, as "
            "in the result's provenance), dtype, quantization and attention backend.",
            ["version", "model", "revision", "dtype", "quantization", "attention"],
            registry=r,
        )
        self.build_info.labels(
            version=package_version(),
            model=model,
            revision=model_revision or "unpinned",
            dtype="",
            quantization="",
            attention="",
        ).set(1)
        self.edits = Counter(
            "klein_edit_edits", "Edits finished, by status and error code.", ["status", "code"], registry=r
        )
        self.stage_seconds = Histogram(
            "klein_edit_stage_seconds",
            "Seconds per stage of an edit (queued, fetch, inference, upload); the stages are parts of "
            "klein_edit_end_to_end_seconds.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "klein_edit_end_to_end_seconds",
            "Seconds from the request record's timestamp to its result (timing_ms.total).",
            buckets=_END_TO_END_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "klein_edit_in_flight", "Requests picked up and not yet committed.", registry=r
        )
        self.consumer_lag = Gauge(
            "klein_edit_consumer_lag",
            "Records of this worker's partitions not yet committed by the group (end offset minus the "
            "committed offset, or minus the group's start position before its first commit).",
            ["topic", "partition"],
            registry=r,
        )
        self.recompiles_after_ready = Gauge(
            "klein_edit_recompiles_after_ready",
            "torch.compile recompilations of the transformer since warm-up finished (goal: 0; a rise "
            "means a request shape outside the warmed range).",
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "klein_edit_model_load_seconds", "Model load and warm-up time.", registry=r
        )
        self.gpu_memory_allocated = Gauge(
            "klein_edit_gpu_memory_allocated_bytes",
            "GPU memory held by tensors now (torch.cuda.memory_allocated); 0 on CPU.",
            registry=r,
        )
        self.gpu_memory_peak = Gauge(
            "klein_edit_gpu_memory_peak_bytes",
            "Highest GPU memory held by tensors since start (torch.cuda.max_memory_allocated); 0 on CPU.",
            registry=r,
        )
        self.moderation = Counter(
            "klein_edit_moderation_outcomes",
            "Moderation verdicts, by kind: prompt_flagged, input_flagged, output_flagged, passed.",
            ["kind"],
            registry=r,
        )
        self.color_checks = Counter(
            "klein_edit_color_checks",
            "Colour checks of recolours, by outcome: passed, out_of_tolerance (delivered), failed "
            "(on_fail fail), corrected (a correction was kept; counted besides the outcome).",
            ["outcome"],
            registry=r,
        )
        self.recycles = Counter(
            "klein_edit_recycles",
            "Times this process decided to recycle itself (exit 75 after draining), by reason: edits, "
            "host_memory or gpu_memory.",
            ["reason"],
            registry=r,
        )
        self.billed_megapixels = Counter(
            "klein_edit_billed_megapixels", "Output megapixels billed.", registry=r
        )
        self.billed_usd = Counter("klein_edit_billed_usd", "USD billed.", registry=r)
        self.adapter_lookups = Counter(
            "klein_edit_adapter_lookups",
            "LoRA adapters of requests, by host-cache result: hit (one HEAD, no read) or miss (read and "
            "checked).",
            ["result"],
            registry=r,
        )
        self.adapter_cache_bytes = Gauge(
            "klein_edit_adapter_cache_bytes", "Host memory held by cached LoRA adapters.", registry=r
        )
        self.dead_lettered = Counter(
            "klein_edit_dead_lettered", "Records sent to the DLQ.", ["code"], registry=r
        )
        self.retries = Counter(
            "klein_edit_retries", "Retries of a record after a transient error.", ["code"], registry=r
        )
        self.tombstones = Counter(
            "klein_edit_tombstones_skipped",
            "Request records with a null value (tombstones): skipped without a result, committed past.",
            registry=r,
        )
        self.publish_rejected = Counter(
            "klein_edit_publish_rejected",
            "Records Kafka refused for good (not retried), by topic and exception type.",
            ["topic", "error"],
            registry=r,
        )
        self.stuck_records = Gauge(
            "klein_edit_stuck_records",
            "Records in flight longer than worker.stuck_after_s (their partition cannot commit past them).",
            registry=r,
        )
        self.oldest_in_flight_seconds = Gauge(
            "klein_edit_oldest_in_flight_seconds", "Age of the oldest record in flight.", registry=r
        )
        self.control_errors = Counter(
            "klein_edit_control_reader_errors",
            "Failed polls or starts of the control (cancel) reader, by exception type.",
            ["error"],
            registry=r,
        )
        self.control_stalled = Gauge(
            "klein_edit_control_reader_stalled",
            "1 while the control reader has failed for 10 s or more without progress (cancels are missed).",
            registry=r,
        )
        self.kafka_access_denied = Gauge(
            "klein_edit_kafka_access_denied",
            "1 while Kafka ACLs deny the worker a request topic or its group (polls are retried).",
            registry=r,
        )
        self.ledger_clear_failures = Counter(
            "klein_edit_ledger_clear_failures",
            "Attempt-ledger objects that could not be deleted after their record was finished (the "
            "object stays until the bucket's lifecycle rule expires it; check s3:DeleteObject).",
            registry=r,
        )
        self.gpu_busy_ratio = Gauge(
            "klein_edit_gpu_busy_ratio", "Share of wall time the GPU thread was busy.", registry=r
        )

    def describe_model(self, identity: ModelIdentity) -> None:
        """Replace `klein_edit_build_info`'s series with the loaded model's identity."""
        self.build_info.clear()
        self.build_info.labels(
            version=package_version(),
            model=identity.model,
            revision=identity.revision,
            dtype=identity.dtype,
            quantization=identity.quantization,
            attention=identity.attention,
        ).set(1)

    def observe_result(self, event: EditCompleted) -> None:
        code = event.error.code.value if event.error else ""
        self.edits.labels(status=event.status.value, code=code).inc()
        timing = event.timing_ms
        for stage, ms in (
            ("queued", timing.queued),
            ("fetch", timing.fetch),
            ("inference", timing.inference),
            ("upload", timing.upload),
        ):
            self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)
        self.end_to_end_seconds.observe(timing.total / 1000.0)
        if event.cost.usd:
            self.billed_megapixels.inc(event.cost.output_megapixels)
            self.billed_usd.inc(event.cost.usd)
        self._observe_checks(event)

    def _observe_checks(self, event: EditCompleted) -> None:
        code = event.error.code if event.error else None
        report = event.moderation
        if code is ErrorCode.INPUT_MODERATED:
            self.moderation.labels(
                kind="prompt_flagged" if report and report.prompt_rule else "input_flagged"
            ).inc()
        elif code is ErrorCode.OUTPUT_MODERATED:
            self.moderation.labels(kind="output_flagged").inc()
        elif report is not None and report.output is not None:
            self.moderation.labels(kind="passed").inc()
        qa = event.color_qa
        if qa is not None:
            if code is ErrorCode.COLOR_OUT_OF_TOLERANCE:
                self.color_checks.labels(outcome="failed").inc()
            else:
                self.color_checks.labels(outcome="passed" if qa.passed else "out_of_tolerance").inc()
            if qa.corrected:
                self.color_checks.labels(outcome="corrected").inc()

    def observe_adapter(self, *, cached: bool, cache_bytes: int) -> None:
        self.adapter_lookups.labels(result="hit" if cached else "miss").inc()
        self.adapter_cache_bytes.set(cache_bytes)

    def observe_gpu_memory(self, stats: Mapping[str, float]) -> None:
        """`stats` as `Editor.memory_stats()` gives it: allocated_bytes and peak_bytes."""
        self.gpu_memory_allocated.set(stats.get("allocated_bytes", 0.0))
        self.gpu_memory_peak.set(stats.get("peak_bytes", 0.0))

    def observe_recompiles(self, recompiles_after_ready: int) -> None:
        """`Editor.recompiles_after_ready`: compilations since warm-up (the attention backend in use is
        `klein_edit_build_info`'s `attention` label)."""
        self.recompiles_after_ready.set(recompiles_after_ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)

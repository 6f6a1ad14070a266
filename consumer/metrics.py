"""Prometheus metrics of one worker, on a registry of its own (so tests can run several workers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from schemas.results import EditCompleted

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.edits = Counter(
            "klein_edit_edits", "Edits finished, by status and error code.", ["status", "code"], registry=r
        )
        self.stage_seconds = Histogram(
            "klein_edit_stage_seconds",
            "Seconds per stage of an edit.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "klein_edit_in_flight", "Requests picked up and not yet committed.", registry=r
        )
        self.consumer_lag = Gauge(
            "klein_edit_consumer_lag",
            "End offset minus committed offset.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "klein_edit_model_load_seconds", "Model load and warm-up time.", registry=r
        )
        self.gpu_memory = Gauge(
            "klein_edit_gpu_memory_bytes", "GPU memory in use and peak.", ["kind"], registry=r
        )
        self.billed_megapixels = Counter(
            "klein_edit_billed_megapixels", "Output megapixels billed.", registry=r
        )
        self.billed_usd = Counter("klein_edit_billed_usd", "USD billed.", registry=r)
        self.dead_lettered = Counter(
            "klein_edit_dead_lettered", "Records sent to the DLQ.", ["code"], registry=r
        )
        self.retries = Counter(
            "klein_edit_retries", "Retries of a record after a transient error.", ["code"], registry=r
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
        self.gpu_busy_ratio = Gauge(
            "klein_edit_gpu_busy_ratio", "Share of wall time the GPU thread was busy.", registry=r
        )

    def observe_result(self, event: EditCompleted) -> None:
        code = event.error.code.value if event.error else ""
        self.edits.labels(status=event.status.value, code=code).inc()
        timing = event.timing_ms
        for stage, ms in (
            ("queued", timing.queued),
            ("fetch", timing.fetch),
            ("inference", timing.inference),
            ("upload", timing.upload),
            ("total", timing.total),
        ):
            self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)
        if event.cost.usd:
            self.billed_megapixels.inc(event.cost.output_megapixels)
            self.billed_usd.inc(event.cost.usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)

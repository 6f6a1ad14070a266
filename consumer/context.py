"""`EditContext`: what is known about one record so far, owned by its handler and filled in by the stages.

A failure result is built from whatever got filled in (`consumer.outcomes`), so a request that fails
at the upload still reports its parameters, the GPU time it used and its timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from schemas.provenance import Provenance
from schemas.requests import EditRequest
from schemas.results import ColorQa, EditParams, ModerationReport, Timing


@dataclass
class EditContext:
    """One record's state across attempts. Times are milliseconds unless named otherwise."""

    request_id: str
    picked_up: float  # time.time() at pickup, seconds
    record_timestamp_ms: int | None
    attempt: int = 1
    lane: int = 0  # the priority lane whose GPU turn the record takes (0 is most urgent)
    request: EditRequest | None = None
    params: EditParams | None = None
    input_megapixels: float = 0.0
    fetch_ms: float = 0.0
    inference_ms: float = 0.0
    upload_ms: float = 0.0
    gpu_ms: float = 0.0
    adapter_load_ms: float = 0.0
    transformer_passes: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    provenance: Provenance | None = None
    moderation: ModerationReport | None = None
    color_qa: ColorQa | None = None
    qa_ms: float = 0.0

    @property
    def queued_ms(self) -> float:
        """From the record's timestamp to pickup; 0 when the record has none."""
        if self.record_timestamp_ms is None:
            return 0.0
        return max(0.0, self.picked_up * 1000.0 - self.record_timestamp_ms)

    def timing(self) -> Timing:
        total = self.queued_ms + (time.time() - self.picked_up) * 1000.0
        return Timing(
            queued=round(self.queued_ms, 1),
            fetch=round(self.fetch_ms, 1),
            inference=round(self.inference_ms, 1),
            upload=round(self.upload_ms, 1),
            adapter_load=round(self.adapter_load_ms, 1),
            qa=round(self.qa_ms, 1),
            total=round(total, 1),
        )

"""Progress events (schema_version 1), published to the progress topic keyed by `request_id`.

Fire-and-forget and throttled (at most one a second per request, plus one at each stage change), so
they can be lost or arrive late; the result event is the only authoritative outcome.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas._base import WireModel


class EditStage(StrEnum):
    FETCHING = "fetching"
    EDITING = "editing"
    UPLOADING = "uploading"


class EditProgressed(WireModel):
    schema_version: Literal[1] = 1
    request_id: str
    stage: EditStage
    step: int = Field(ge=0, description="Denoising steps done (0 outside the editing stage's steps).")
    total_steps: int = Field(ge=0)
    elapsed_ms: float = Field(ge=0, description="Since pickup.")
    eta_ms: float | None = Field(
        default=None, description="Estimated time to the end of the edit; null if unknown."
    )
    worker: str
    at: datetime

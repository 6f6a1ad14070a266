"""Control commands (schema_version 1), on the control topic keyed by `request_id`.

The control topic is meant to be compacted: the latest command per request id is what matters.
Every worker reads it independently (not as a member of the request group).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas._base import WireModel
from schemas.requests import RequestId


class CancelRequested(WireModel):
    """Stop this request: skipped if not started, stopped between denoising steps if running."""

    schema_version: Literal[1] = 1
    request_id: RequestId
    action: Literal["cancel"] = "cancel"
    requested_at: datetime | None = None
    reason: str | None = Field(default=None, max_length=500)

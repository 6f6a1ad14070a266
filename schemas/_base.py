"""The base model of every wire event: frozen, strict about unknown fields, versioned."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Frozen and `extra="forbid"`: a typo in a producer's field name is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

"""The base model of every wire event: frozen, strict about unknown fields, versioned."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Frozen and `extra="forbid"`: the model is exactly one version of the contract.

    Readers that must tolerate fields a newer publisher added go through `consumer.kafka.codec`, which
    ignores (and reports) unknown fields but rejects near-misses of known ones.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

"""Exponential backoff with jitter for every retry loop of the worker.

Without jitter, workers that lost the same broker or S3 endpoint at the same moment retry in lockstep
and hit it together when it comes back. Each delay is drawn uniformly from [delay / 2, delay]
("equal jitter"): never less than half the nominal delay, never in step with another worker.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays in seconds: `first`, then doubling up to `cap`, each jittered; `reset()` starts over."""

    def __init__(self, first: float, cap: float, *, rng: random.Random | None = None) -> None:
        if first < 0 or cap < first:
            raise ValueError(f"need 0 <= first <= cap, got first={first}, cap={cap}")
        self._first = first
        self._cap = cap
        self._nominal = first
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay to wait now (seconds); the nominal delay then doubles, up to the cap."""
        nominal = self._nominal
        self._nominal = min(self._nominal * 2, self._cap)
        return jittered(nominal, self._rng)

    def reset(self) -> None:
        self._nominal = self._first


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """A delay drawn uniformly from [delay / 2, delay] (seconds)."""
    return (rng or random).uniform(delay / 2, delay)

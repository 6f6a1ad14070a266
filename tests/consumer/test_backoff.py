"""Backoff: doubling delays with equal jitter, so workers that failed together retry apart."""

from __future__ import annotations

import random

import pytest

from consumer.backoff import Backoff, jittered


def test_delays_double_up_to_the_cap_each_jittered_into_its_upper_half() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.next() for _ in nominal]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected / 2 <= delay <= expected
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


def test_two_workers_do_not_retry_in_step() -> None:
    a, b = Backoff(1.0, 30.0, rng=random.Random(1)), Backoff(1.0, 30.0, rng=random.Random(2))
    assert [a.next() for _ in range(5)] != [b.next() for _ in range(5)]


def test_jittered_and_bounds() -> None:
    assert all(1.0 <= jittered(2.0) <= 2.0 for _ in range(100))
    assert jittered(0.0) == 0.0
    with pytest.raises(ValueError, match="first <= cap"):
        Backoff(5.0, 1.0)

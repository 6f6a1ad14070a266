"""The ACL-denial episode of a running worker (`consumer.kafka.access.AccessWatch`), on a fake clock.

The real-broker case (a revoked ACL on Apache Kafka, a worker process) is in
tests/consumer/kafka/test_security.py.
"""

from __future__ import annotations

import structlog
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState
from consumer.kafka.access import PROBLEM, AccessWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch(clock: Clock, **options: float) -> tuple[AccessWatch, WorkerState, WorkerMetrics]:
    state, metrics = WorkerState(), WorkerMetrics()
    state.model_ready = state.in_group = True
    return AccessWatch(state, metrics, bootstrap="b:9093", clock=clock, **options), state, metrics


def test_a_denied_topic_is_one_error_line_not_ready_and_backed_off() -> None:
    clock = Clock()
    access, state, metrics = watch(clock)
    assert state.ready
    with structlog.testing.capture_logs() as logs:
        delays = [access.denied(TopicAuthorizationFailedError("t.requests")) for _ in range(8)]
    assert [e["event"] for e in logs] == ["kafka.access_denied"]  # one line per episode, not per poll
    assert logs[0]["log_level"] == "error"
    assert logs[0]["denied"] == "access to topic(s) t.requests"
    assert not state.ready
    assert "denies this worker access to topic(s) t.requests" in state.not_ready_reason
    assert "b:9093" in state.not_ready_reason
    assert metrics.kafka_access_denied._value.get() == 1
    # After each wait, one poll at once (its error was fetched before the wait); then 1 s doubling
    # to 30 s, each jittered to [d/2, d].
    waits, again = delays[0::2], delays[1::2]
    assert again == [0.0] * 4
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 2.0
    assert 4.0 <= waits[3] <= 8.0


def test_access_is_restored_only_after_polls_succeed_for_a_while() -> None:
    clock = Clock()
    access, state, metrics = watch(clock, clear_after_s=3.0)
    access.denied(GroupAuthorizationFailedError("g-1"))
    assert "consumer group g-1" in state.problems[PROBLEM]
    with structlog.testing.capture_logs() as logs:
        access.polled()
        clock.now += 2.0
        access.polled()
        assert not state.ready  # 2 s of clean polls: not yet
        access.denied(TopicAuthorizationFailedError("t"))  # denied again: the same episode goes on
        clock.now += 2.9
        access.polled()
        clock.now += 2.9
        access.polled()
        assert not state.ready
        clock.now += 0.2
        access.polled()
    assert [e["event"] for e in logs] == ["kafka.access_restored"]
    assert logs[0]["denied_polls"] == 2
    assert state.ready
    assert metrics.kafka_access_denied._value.get() == 0
    # A later denial is a new episode: logged again, backoff from the start.
    with structlog.testing.capture_logs() as logs:
        assert access.denied(TopicAuthorizationFailedError({"a", "b"})) <= 1.0
    assert logs[0]["denied"] == "access to topic(s) a, b"


def test_the_backoff_stays_under_the_poll_interval() -> None:
    access, _, _ = watch(Clock(), max_delay_s=2.5)
    assert all(d <= 2.5 for d in (access.denied(TopicAuthorizationFailedError("t")) for _ in range(10)))


def test_a_clean_poll_after_a_wait_means_the_next_error_is_fresh() -> None:
    access, _, _ = watch(Clock())
    assert access.denied(TopicAuthorizationFailedError("t")) > 0
    access.polled()  # the second look found no error (the refetch was not back yet)
    assert access.denied(TopicAuthorizationFailedError("t")) > 0  # a fresh error: wait again


def test_clean_polls_without_a_denial_change_nothing() -> None:
    access, state, _ = watch(Clock())
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            access.polled()
    assert logs == []
    assert state.ready

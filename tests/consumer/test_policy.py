"""decide(): every branch of the error policy table."""

from __future__ import annotations

import pytest

from consumer.policy import (
    Action,
    DeadlineExceeded,
    InternalError,
    PoisonMessage,
    RequestRejected,
    Verdict,
    decide,
)
from pipeline.errors import DeviceFailure, EditCanceled, GpuOutOfMemory
from schemas.errors import ErrorCode, InvalidEvent, KleinEditError


class NotFound(KleinEditError):
    code = ErrorCode.INPUT_NOT_FOUND


class StorageDown(KleinEditError):
    code = ErrorCode.STORAGE_UNAVAILABLE
    retryable = True


class FatalInvalid(KleinEditError):
    """Fatal wins over every other rule, even the dead-letter one."""

    code = ErrorCode.INVALID_EVENT
    fatal = True


def verdict(error: KleinEditError, attempt: int = 1, max_attempts: int = 3) -> Verdict:
    return decide(error, attempt=attempt, max_attempts=max_attempts, backoff_s=1.0, backoff_max_s=30.0)


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_fatal_errors_crash(attempt: int) -> None:
    assert verdict(DeviceFailure("CUDA error: an illegal memory access"), attempt=attempt) == Verdict(
        Action.CRASH
    )
    assert verdict(FatalInvalid("x"), attempt=attempt).action is Action.CRASH


def test_fatal_false_attribute_does_not_crash() -> None:
    error = StorageDown("slow")
    error.fatal = False  # type: ignore[attr-defined]
    assert verdict(error).action is Action.RETRY


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_invalid_events_are_dead_lettered_at_once(attempt: int) -> None:
    assert verdict(InvalidEvent("image: Field required"), attempt=attempt) == Verdict(Action.DEAD_LETTER)
    assert verdict(RequestRejected("5 references; this worker allows 4"), attempt=attempt).action is (
        Action.DEAD_LETTER
    )


def test_invalid_event_is_dead_lettered_even_if_marked_retryable() -> None:
    assert verdict(InvalidEvent("x", retryable=True)).action is Action.DEAD_LETTER


def test_poison_messages_are_dead_lettered() -> None:
    error = PoisonMessage("picked up 3 times without finishing")
    assert error.code is ErrorCode.INTERNAL
    assert error.retryable is False
    assert verdict(error, attempt=3) == Verdict(Action.DEAD_LETTER)


@pytest.mark.parametrize(
    "error",
    [
        StorageDown("503"),
        InternalError("KeyError('x')"),
        KleinEditError("x", retryable=True),
    ],
    ids=["storage", "internal", "base-retryable"],
)
def test_retryable_errors_below_max_attempts_retry(error: KleinEditError) -> None:
    assert verdict(error, attempt=1, max_attempts=3) == Verdict(Action.RETRY, backoff_s=1.0)
    assert verdict(error, attempt=2, max_attempts=3) == Verdict(Action.RETRY, backoff_s=2.0)


@pytest.mark.parametrize("attempt", [3, 4, 100])
def test_retryable_errors_at_or_past_max_attempts_are_dead_lettered(attempt: int) -> None:
    assert verdict(StorageDown("503"), attempt=attempt, max_attempts=3) == Verdict(Action.DEAD_LETTER)


@pytest.mark.parametrize("max_attempts", [2, 3, 10])
def test_gpu_out_of_memory_is_retried_on_the_same_worker_at_most_once(max_attempts: int) -> None:
    assert verdict(GpuOutOfMemory("oom"), attempt=1, max_attempts=max_attempts) == Verdict(
        Action.RETRY, backoff_s=1.0
    )
    for attempt in (2, 3, 9):
        assert verdict(GpuOutOfMemory("oom"), attempt=attempt, max_attempts=max_attempts) == Verdict(
            Action.DEAD_LETTER
        )


def test_a_single_attempt_budget_never_retries() -> None:
    assert verdict(StorageDown("503"), attempt=1, max_attempts=1).action is Action.DEAD_LETTER


def test_backoff_doubles_and_is_capped() -> None:
    delays = [
        decide(StorageDown("x"), attempt=a, max_attempts=100, backoff_s=0.5, backoff_max_s=10.0).backoff_s
        for a in range(1, 9)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_zero_backoff_retries_immediately() -> None:
    v = decide(StorageDown("x"), attempt=4, max_attempts=5, backoff_s=0.0, backoff_max_s=30.0)
    assert v == Verdict(Action.RETRY, backoff_s=0.0)


@pytest.mark.parametrize(
    "error",
    [
        NotFound("s3://in/a.png does not exist"),
        DeadlineExceeded("picked up after the deadline"),
        EditCanceled("canceled"),
        KleinEditError("unknown but permanent"),
        StorageDown("forbidden", retryable=False),
    ],
    ids=["not-found", "deadline", "canceled", "base", "override"],
)
@pytest.mark.parametrize("attempt", [1, 3, 5])
def test_permanent_errors_fail(error: KleinEditError, attempt: int) -> None:
    assert verdict(error, attempt=attempt) == Verdict(Action.FAIL)


def test_verdicts_other_than_retry_carry_no_backoff() -> None:
    for error in (InvalidEvent("x"), NotFound("x"), DeviceFailure("x"), GpuOutOfMemory("x")):
        v = verdict(error, attempt=3, max_attempts=3)
        assert v.action is not Action.RETRY
        assert v.backoff_s == 0.0

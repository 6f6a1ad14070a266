"""The one place that decides what each error does to a record.

Every package raises typed errors carrying a stable `code` and a `retryable` flag; this module turns
an error plus the attempt count into a `Verdict`. Keeping it here (and nowhere else) means a change of
policy is a change of one table, and `docs/reliability.md` can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from schemas.errors import ErrorCode, KleinEditError
from schemas.results import ModerationReport


class Action(Enum):
    RETRY = "retry"  # try the same record again after a backoff; nothing is published yet
    FAIL = "fail"  # publish a `failed` (or `canceled`) result and commit
    DEAD_LETTER = "dead_letter"  # publish a `failed` result, copy the raw record to the DLQ, commit
    CRASH = "crash"  # the process is unhealthy: do not commit, exit non-zero, let the orchestrator replace it


@dataclass(frozen=True)
class Verdict:
    action: Action
    backoff_s: float = 0.0


class InternalError(KleinEditError):
    """An unexpected exception. Retryable: a bug then ends in the DLQ, to be replayed after a fix."""

    code = ErrorCode.INTERNAL
    retryable = True


class PoisonMessage(KleinEditError):
    """The record was picked up `max_attempts` times without finishing: it crashed or hung the worker."""

    code = ErrorCode.INTERNAL
    retryable = False


class DeadlineExceeded(KleinEditError):
    code = ErrorCode.DEADLINE_EXCEEDED
    retryable = False


class RequestRejected(KleinEditError):
    """The request is valid JSON but breaks a limit configured on this worker (e.g. too many references)."""

    code = ErrorCode.INVALID_EVENT
    retryable = False


class Moderated(KleinEditError):
    """Flagged by moderation; `report` holds the scores (or the rule) for the result. Not retried, never
    dead-lettered: the content, not the worker, is the cause."""

    retryable = False

    def __init__(self, message: str, *, report: ModerationReport) -> None:
        super().__init__(message)
        self.report = report


class InputModerated(Moderated):
    """The prompt or an input image was flagged: no edit work is spent."""

    code = ErrorCode.INPUT_MODERATED


class OutputModerated(Moderated):
    """The output was flagged and withheld: nothing is stored."""

    code = ErrorCode.OUTPUT_MODERATED


class ColorOutOfTolerance(KleinEditError):
    """A recolour's kept output is outside `color_qa.max_delta_e` and the request said `on_fail: fail`.
    The output is stored for review and named in the result."""

    code = ErrorCode.COLOR_OUT_OF_TOLERANCE
    retryable = False


OOM_ATTEMPTS = 2  # GPU_OUT_OF_MEMORY is retried on the same worker at most once


def decide(
    error: KleinEditError, *, attempt: int, max_attempts: int, backoff_s: float, backoff_max_s: float
) -> Verdict:
    if getattr(error, "fatal", False):
        return Verdict(Action.CRASH)
    if error.code is ErrorCode.INVALID_EVENT or isinstance(error, PoisonMessage):
        return Verdict(Action.DEAD_LETTER)
    if error.retryable:
        if error.code is ErrorCode.GPU_OUT_OF_MEMORY:
            # The cache was emptied, so one more try here can succeed (fragmentation); a second OOM on the
            # same worker means the edit does not fit this GPU: stop spending GPU time on it here.
            max_attempts = min(max_attempts, OOM_ATTEMPTS)
        if attempt < max_attempts:
            return Verdict(Action.RETRY, backoff_s=min(backoff_max_s, backoff_s * 2 ** (attempt - 1)))
        return Verdict(Action.DEAD_LETTER)
    return Verdict(Action.FAIL)

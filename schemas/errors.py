"""Stable error codes shared by every package, and the base class of all typed errors.

The codes are part of the wire contract (they appear in result events and dead-letter headers), so
they never change meaning. Each package subclasses `KleinEditError` with its own errors; one place in
`consumer/` decides what each error does, using only `code` and `retryable`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_EVENT = "INVALID_EVENT"
    INPUT_NOT_FOUND = "INPUT_NOT_FOUND"
    INPUT_FORBIDDEN = "INPUT_FORBIDDEN"
    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"
    INVALID_IMAGE = "INVALID_IMAGE"
    INVALID_ADAPTER = "INVALID_ADAPTER"
    GPU_OUT_OF_MEMORY = "GPU_OUT_OF_MEMORY"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELED = "CANCELED"
    INTERNAL = "INTERNAL"


class KleinEditError(Exception):
    """Base of every error the worker knows how to answer.

    `code` is the stable wire code; `retryable` says whether trying the same request again can
    succeed (a timeout can, a missing object cannot).
    """

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code.value}, retryable={self.retryable}, message={self.message!r})"


class InvalidEvent(KleinEditError):
    """The record is not a valid request; the message names the offending field."""

    code = ErrorCode.INVALID_EVENT

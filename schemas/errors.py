"""Stable error codes shared by every package, and the base class of all typed errors.

The codes are part of the wire contract (they appear in result events and dead-letter headers), so
they never change meaning. Each package subclasses `KleinEditError` with its own errors; one place in
`consumer/` (`consumer.policy.decide`) says what each error does, from `code` and `retryable` only:
retry (after a backoff), fail, dead-letter, or crash (a `fatal` error: exit, let the pod restart).

The whole tree, as httpx draws its own (code, retryable; "fatal" ends the process):

    KleinEditError (schemas.errors) ............. a request's error: it becomes the result's `error`
    ├── InvalidEvent ............................ INVALID_EVENT   no   the record is not a valid request
    ├── StorageError (storage.errors) ........... INTERNAL        no
    │   ├── InputNotFound ....................... INPUT_NOT_FOUND no
    │   ├── InputForbidden ...................... INPUT_FORBIDDEN no
    │   ├── InputTooLarge ....................... INPUT_TOO_LARGE no
    │   ├── AdapterRefused ...................... INVALID_ADAPTER no
    │   ├── InvalidLocation ..................... INVALID_EVENT   no   a URI outside the allow-list
    │   └── StorageUnavailable .................. STORAGE_UNAVAILABLE yes
    ├── PipelineError (pipeline.errors) ......... INTERNAL        no
    │   ├── InvalidImage ........................ INVALID_IMAGE   no
    │   ├── ImageTooLarge ....................... INPUT_TOO_LARGE no
    │   ├── PromptTooLong ....................... INVALID_EVENT   no
    │   ├── InvalidAdapter ...................... INVALID_ADAPTER no
    │   ├── GpuOutOfMemory ...................... GPU_OUT_OF_MEMORY yes (once on the same worker)
    │   ├── DeviceFailure ....................... INTERNAL        fatal
    │   ├── EditCanceled ........................ CANCELED        no   a control command or the drain
    │   └── SigningFailed (pipeline.signing) .... INTERNAL        yes
    ├── InternalError (consumer.policy) ......... INTERNAL        yes  an unexpected exception, mapped
    ├── PoisonMessage (consumer.policy) ......... INTERNAL        no   dead-lettered: it crashed the worker
    ├── DeadlineExceeded (consumer.policy) ...... DEADLINE_EXCEEDED no
    ├── RequestRejected (consumer.policy) ....... INVALID_EVENT   no   over a limit of this worker
    ├── Moderated (consumer.policy) ............. INTERNAL        no   a base, never raised itself
    │   ├── InputModerated ...................... INPUT_MODERATED no   the prompt or an input image
    │   └── OutputModerated ..................... OUTPUT_MODERATED no  the output is withheld
    ├── ColorOutOfTolerance (consumer.policy) ... COLOR_OUT_OF_TOLERANCE no  color_qa.on_fail "fail"
    └── PublishRejected (consumer.publisher) .... INTERNAL        no   Kafka refused the result for good

    Start-up errors (not KleinEditError: no request to answer; each ends the command with the exit
    status `consumer.cli.main.EXIT_STATUS` gives it):
    ├── ConfigurationError (consumer.settings) ......... 2  a setting or variable is wrong
    ├── TopicsMissing (consumer.kafka.clients) ......... 2  the worker never creates topics
    ├── PortUnavailable (consumer.http.health) ......... 2  the health port is taken
    ├── SigningSetupError (pipeline.signing) ........... 2  the C2PA key or chain cannot sign
    ├── ModelLoadError (pipeline.errors) ............... 3  the model cannot be loaded
    └── KafkaAccessDenied (consumer.worker) ............ 4  the brokers refuse the credentials

`consumer.handler.ProcessUnusable` carries a fatal error out of a record's handling to the worker,
which exits with 70 (EX_SOFTWARE). tests/test_errors_tree.py checks this drawing against the code.
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
    INPUT_MODERATED = "INPUT_MODERATED"
    OUTPUT_MODERATED = "OUTPUT_MODERATED"
    COLOR_OUT_OF_TOLERANCE = "COLOR_OUT_OF_TOLERANCE"


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

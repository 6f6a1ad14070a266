"""Typed errors of the pipeline package.

Every per-request failure is a `KleinEditError` with a stable wire `code` and a `retryable` flag, so the
consumer decides what to do from those two fields alone. `ModelLoadError` is different: it happens at
startup (loading or warm-up), never per request, and carries one line saying what is wrong and what to do.
"""

from __future__ import annotations

from schemas.errors import ErrorCode, KleinEditError


class PipelineError(KleinEditError):
    """Base of the per-request errors raised by `pipeline/`."""

    code = ErrorCode.INTERNAL
    retryable = False


class InvalidImage(PipelineError):
    """An input is not a decodable image, is truncated, or its format is not on the allow-list."""

    code = ErrorCode.INVALID_IMAGE


class ImageTooLarge(PipelineError):
    """An input declares more pixels than allowed (including decompression bombs); never decoded."""

    code = ErrorCode.INPUT_TOO_LARGE


class PromptTooLong(PipelineError):
    """The chat-templated prompt has more tokens than the text encoder takes (512); never truncated."""

    code = ErrorCode.INVALID_EVENT


class InvalidAdapter(PipelineError):
    """A LoRA adapter that is not a readable safetensors file, or does not fit this model's transformer
    (the message names the module); never retried."""

    code = ErrorCode.INVALID_ADAPTER


class GpuOutOfMemory(PipelineError):
    """The edit did not fit in GPU memory; the cache was emptied, so a retry (maybe elsewhere) can succeed."""

    code = ErrorCode.GPU_OUT_OF_MEMORY
    retryable = True


class DeviceFailure(PipelineError):
    """A sticky CUDA error: the context is unusable until the process exits.

    `retryable` is True because another worker (or this one after a restart) can run the same request;
    `fatal` tells the consumer that this process must stop taking work and exit.
    """

    code = ErrorCode.INTERNAL
    retryable = True
    fatal = True


class EditCanceled(PipelineError):
    """Raised from a step callback to stop an edit between two denoising steps."""

    code = ErrorCode.CANCELED


class ModelLoadError(Exception):
    """The model cannot serve: the worker must not report ready.

    Raised by `KleinEditor.load` (the directory, its files, its components and how they fit together) and
    by `KleinEditor.warm_up` (an edit that fails before ready). The message is one line, what is wrong and
    what to do about it, because it is what an operator sees when the worker refuses to start; the
    library's exception, when there is one, is the `__cause__`.
    """

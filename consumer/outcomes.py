"""The one place that builds `EditCompleted` events: succeeded (made here or answered from S3), failed,
canceled.

The stages build the succeeded result once the output is stored; the handler builds the failed or
canceled one once `consumer.policy` has settled the record's fate. Both come here, so every result
carries the same fields from the same `EditContext`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.context import EditContext
from schemas.errors import ErrorCode, KleinEditError
from schemas.results import Cost, EditCompleted, EditStatus, ErrorInfo, OutputInfo


class Outcomes:
    """Builds results for one worker: `model` and `worker` name it in every event; `usd_per_megapixel`
    prices outputs ($ per output megapixel, `Cost.for_output`)."""

    def __init__(
        self, *, model: str, worker: str, usd_per_megapixel: float, bill_moderated_outputs: bool = False
    ) -> None:
        self._model = model
        self._worker = worker
        self._usd_per_megapixel = usd_per_megapixel
        self._bill_moderated = bill_moderated_outputs

    def succeeded(
        self,
        ctx: EditContext,
        output: OutputInfo,
        *,
        images: int = 1,
        outputs: list[OutputInfo] | None = None,
    ) -> EditCompleted:
        """The `succeeded` result: `output` (the first image) and `outputs` (every image delivered), billed
        per output megapixel for each of the `images` generated (num_images or colour candidates)."""
        return self._event(
            ctx,
            EditStatus.SUCCEEDED,
            output=output,
            cost=self._billed(ctx, images),
            error=None,
            outputs=outputs or [output],
        )

    def out_of_tolerance(
        self,
        ctx: EditContext,
        output: OutputInfo,
        error: KleinEditError,
        *,
        images: int = 1,
        outputs: list[OutputInfo] | None = None,
    ) -> EditCompleted:
        """`failed` with COLOR_OUT_OF_TOLERANCE: the kept output is stored for review and named here, and
        every generated image is billed (the GPU ran)."""
        return self._event(
            ctx,
            EditStatus.FAILED,
            output=output,
            cost=self._billed(ctx, images),
            error=ErrorInfo.from_error(error),
            outputs=outputs or [output],
        )

    def unsuccessful(self, ctx: EditContext, error: KleinEditError) -> EditCompleted:
        """The `failed` (or `canceled`) result for an error: costs nothing (an output withheld by moderation
        costs its megapixels when the operator bills those), reports the GPU time used."""
        status = EditStatus.CANCELED if error.code is ErrorCode.CANCELED else EditStatus.FAILED
        if error.code is ErrorCode.OUTPUT_MODERATED and self._bill_moderated and ctx.params is not None:
            cost = self._billed(ctx, 1)
        else:
            cost = Cost.free(input_megapixels=ctx.input_megapixels, usd_per_megapixel=self._usd_per_megapixel)
        return self._event(ctx, status, output=None, cost=cost, error=ErrorInfo.from_error(error))

    def _billed(self, ctx: EditContext, images: int) -> Cost:
        params = ctx.params
        assert params is not None
        return Cost.for_output(
            width=params.width,
            height=params.height,
            input_megapixels=ctx.input_megapixels,
            usd_per_megapixel=self._usd_per_megapixel,
            adapters=len(params.loras),
            adapter_bytes=sum(info.bytes for info in params.loras),
            images=images,
        )

    def _event(
        self,
        ctx: EditContext,
        status: EditStatus,
        *,
        output: OutputInfo | None,
        cost: Cost,
        error: ErrorInfo | None,
        outputs: list[OutputInfo] | None = None,
    ) -> EditCompleted:
        succeeded = status is EditStatus.SUCCEEDED
        return EditCompleted(
            request_id=ctx.request_id,
            status=status,
            output=output,
            cost=cost,
            timing_ms=ctx.timing(),
            error=error,
            params=ctx.params,
            model=self._model,
            attempt=ctx.attempt,
            worker=self._worker,
            completed_at=datetime.now(UTC),
            metadata=ctx.metadata,
            gpu_ms=round(ctx.gpu_ms, 1),
            warnings=[f"unknown field ignored: {path}" for path in ctx.request.ignored_fields]
            if ctx.request is not None
            else [],
            provenance=ctx.provenance if succeeded else None,
            transformer_passes=ctx.transformer_passes if succeeded else None,
            color_qa=ctx.color_qa,
            moderation=ctx.moderation,
            outputs=outputs or [],
        )

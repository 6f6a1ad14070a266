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

    def __init__(self, *, model: str, worker: str, usd_per_megapixel: float) -> None:
        self._model = model
        self._worker = worker
        self._usd_per_megapixel = usd_per_megapixel

    def succeeded(self, ctx: EditContext, output: OutputInfo) -> EditCompleted:
        """The `succeeded` result for `output`, billed per output megapixel; `ctx.params` is set."""
        loras = ctx.params.loras if ctx.params is not None else []
        cost = Cost.for_output(
            width=output.width,
            height=output.height,
            input_megapixels=ctx.input_megapixels,
            usd_per_megapixel=self._usd_per_megapixel,
            adapters=len(loras),
            adapter_bytes=sum(info.bytes for info in loras),
        )
        return self._event(ctx, EditStatus.SUCCEEDED, output=output, cost=cost, error=None)

    def unsuccessful(self, ctx: EditContext, error: KleinEditError) -> EditCompleted:
        """The `failed` (or `canceled`) result for an error: costs nothing, reports the GPU time used."""
        status = EditStatus.CANCELED if error.code is ErrorCode.CANCELED else EditStatus.FAILED
        cost = Cost.free(input_megapixels=ctx.input_megapixels, usd_per_megapixel=self._usd_per_megapixel)
        return self._event(ctx, status, output=None, cost=cost, error=ErrorInfo.from_error(error))

    def _event(
        self,
        ctx: EditContext,
        status: EditStatus,
        *,
        output: OutputInfo | None,
        cost: Cost,
        error: ErrorInfo | None,
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
        )

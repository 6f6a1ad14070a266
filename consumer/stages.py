"""The stages of one edit, free of Kafka: prepare (fetch + decode), edit (GPU), store (encode + upload).

`EditWorker` calls these for each record and overlaps them across records; this module knows nothing
about offsets or commits. Blocking work goes to the I/O thread pool, GPU work to the `GpuThread`, so the
event loop only ever waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from PIL import Image

from consumer.gpu import GpuThread
from consumer.http.metrics import WorkerMetrics
from consumer.lora_cache import AdapterCache, AdapterResolver, ResolvedAdapter
from consumer.policy import DeadlineExceeded, RequestRejected
from consumer.provenance import FetchedInput, OutputSigner, ProvenanceRecorder, from_metadata, to_metadata
from consumer.settings import Settings
from pipeline import (
    ActiveAdapter,
    DecodedImage,
    EditJob,
    Editor,
    EditOutput,
    check_edit_input,
    decode_image,
    keeps_alpha,
    megapixels,
    plan_geometry,
    to_conditioning_size,
)
from schemas.errors import ErrorCode, KleinEditError
from schemas.provenance import Provenance
from schemas.requests import (
    WHITE,
    AdapterRef,
    EditRequest,
    OutputAlpha,
    OutputFormat,
    OutputMetadata,
    hex6,
    hex_to_rgb,
)
from schemas.results import (
    AdapterInfo,
    Cost,
    EditCompleted,
    EditParams,
    EditStatus,
    ErrorInfo,
    OutputInfo,
    Timing,
)
from storage import (
    FetchedObject,
    InvalidLocation,
    ObjectVersion,
    PutOutcome,
    S3Location,
    StoredObject,
    parse_input_location,
    resolve_output_location,
)

T = TypeVar("T")

# Object metadata written with every output: enough to answer a redelivered request without the GPU.
META_REQUEST_ID = "request-id"
# "<sha256>:<bytes>" of each adapter, comma-separated in request order (URIs and scales are the request's).
META_ADAPTERS = "adapters"
OUTPUT_PROFILE = "sRGB"  # every output is encoded in sRGB with that ICC profile embedded


class Store(Protocol):
    """What the processor needs from S3 (`storage.ImageStore` is the real one)."""

    def fetch(self, location: S3Location) -> bytes: ...
    def describe_adapter(self, location: S3Location) -> ObjectVersion: ...
    def fetch_adapter(self, location: S3Location) -> FetchedObject: ...
    def find_output(self, location: S3Location) -> StoredObject | None: ...
    def put_output(
        self, location: S3Location, data: bytes, *, content_type: str, metadata: dict[str, str]
    ) -> PutOutcome: ...


@dataclass
class EditContext:
    """What is known about one record so far; a failure result is built from whatever got filled in."""

    request_id: str
    picked_up: float  # time.time() at pickup
    record_timestamp_ms: int | None
    attempt: int = 1
    request: EditRequest | None = None
    params: EditParams | None = None
    input_megapixels: float = 0.0
    fetch_ms: float = 0.0
    inference_ms: float = 0.0
    upload_ms: float = 0.0
    gpu_ms: float = 0.0
    adapter_load_ms: float = 0.0
    transformer_passes: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    provenance: Provenance | None = None

    @property
    def queued_ms(self) -> float:
        if self.record_timestamp_ms is None:
            return 0.0
        return max(0.0, self.picked_up * 1000.0 - self.record_timestamp_ms)

    def timing(self) -> Timing:
        total = self.queued_ms + (time.time() - self.picked_up) * 1000.0
        return Timing(
            queued=round(self.queued_ms, 1),
            fetch=round(self.fetch_ms, 1),
            inference=round(self.inference_ms, 1),
            upload=round(self.upload_ms, 1),
            adapter_load=round(self.adapter_load_ms, 1),
            total=round(total, 1),
        )


@dataclass
class PreparedEdit:
    """A request whose inputs are fetched and decoded, ready for the GPU."""

    request: EditRequest
    images: list[Image.Image]
    output: S3Location
    output_format: OutputFormat
    params: EditParams
    alpha: Image.Image | None = None  # the base image's alpha, when the output keeps it
    adapters: list[ActiveAdapter] = field(default_factory=list)
    inputs: list[FetchedInput] = field(default_factory=list)  # base first, with their SHA-256


@dataclass
class FinishedEdit:
    image: Image.Image


class EditProcessor:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        editor: Editor,
        gpu: GpuThread,
        io: Executor,
        worker_name: str,
        metrics: WorkerMetrics | None = None,
        signer: OutputSigner | None = None,
    ) -> None:
        """`signer`: embeds a signed C2PA manifest in every marked output; None signs nothing."""
        self._settings = settings
        self._store = store
        self._editor = editor
        self._gpu = gpu
        self._io = io
        self._worker_name = worker_name
        self._adapters = AdapterResolver(
            settings.s3,
            source=store,
            editor=editor,
            cache=AdapterCache(settings.pipeline.adapter_cache_bytes),
            metrics=metrics,
        )
        self._provenance = ProvenanceRecorder(editor, signer=signer)

    @property
    def editor(self) -> Editor:
        return self._editor

    @property
    def model_name(self) -> str:
        return self._editor.model_name

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- stage 1: checks, locations, idempotency, fetch and decode ------------------------------------

    async def prepare(self, ctx: EditContext, request: EditRequest) -> PreparedEdit | EditCompleted:
        """Returns the prepared edit, or the finished result when the output already exists."""
        ctx.request = request
        ctx.metadata = dict(request.metadata)
        limits = self._settings.pipeline
        if len(request.references) > limits.max_references:
            raise RequestRejected(
                f"references: {len(request.references)} given, at most {limits.max_references} allowed"
            )
        if request.deadline is not None and datetime.now(UTC) > request.deadline:
            raise DeadlineExceeded(f"deadline {request.deadline.isoformat()} passed before pickup")
        requested = (request.width, request.height) if request.width and request.height else None
        if requested is not None and requested[0] * requested[1] > limits.max_output_megapixels * 1e6:
            raise RequestRejected(
                f"width x height: {requested[0]}x{requested[1]} = {requested[0] * requested[1] / 1e6:.2f} MP "
                f"exceeds the output limit of {limits.max_output_megapixels:g} MP "
                "(KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)"
            )
        if len(request.loras) > limits.max_adapters:
            raise RequestRejected(
                f"loras: {len(request.loras)} given, at most {limits.max_adapters} allowed on this worker "
                "(KLEIN_EDIT_PIPELINE__MAX_ADAPTERS)"
            )
        await self._in_io(self._editor.check_prompt, request.compiled_prompt)

        s3 = self._settings.s3
        inputs = [parse_input_location(request.image, s3, field="image")]
        inputs += [
            parse_input_location(ref, s3, field=f"references[{i}]")
            for i, ref in enumerate(request.references)
        ]
        adapter_locations = [
            self._adapters.locate(ref, field=f"loras[{i}]") for i, ref in enumerate(request.loras)
        ]
        spec = request.output
        fmt = spec.format if spec else OutputFormat.PNG
        output = resolve_output_location(
            spec.uri if spec else None,
            request_id=request.request_id,
            extension=fmt.extension,
            settings=s3,
            inputs=inputs,
        )

        started = time.perf_counter()
        existing = await self._in_io(self._store.find_output, output)
        if existing is not None:
            ctx.fetch_ms = (time.perf_counter() - started) * 1000.0
            return self._replay_existing(ctx, request, existing, [loc.uri for loc in inputs])

        # Adapters first: a bad one fails the request before any image is read.
        adapters: list[ResolvedAdapter] = list(
            await asyncio.gather(
                *(
                    self._in_io(self._resolve_adapter, ref, loc, f"loras[{i}]")
                    for i, (ref, loc) in enumerate(zip(request.loras, adapter_locations, strict=True))
                )
            )
        )
        ctx.adapter_load_ms = sum(adapter.load_ms for adapter in adapters)
        names = ["image", *(f"references[{i}]" for i in range(len(request.references)))]
        background = spec.background if spec else WHITE
        decoded = await asyncio.gather(
            *(
                self._in_io(self._fetch_and_decode, loc, name, hex_to_rgb(background))
                for loc, name in zip(inputs, names, strict=True)
            )
        )
        images = [item.image for item, _ in decoded]
        ctx.input_megapixels = sum(megapixels(image) for image in images)
        base_alpha = decoded[0][0].alpha
        keep = keeps_alpha(
            spec.alpha if spec else OutputAlpha.AUTO,
            base_has_alpha=base_alpha is not None,
            fmt=fmt,
            pure_recolor=request.is_pure_recolor,
        )
        # Every input is resized here, on I/O threads, to exactly the size the pipeline conditions on: the
        # GPU thread never resamples a 40 MP photo and the pipeline crops nothing.
        geometry = plan_geometry([image.size for image in images], requested, limits.max_megapixels)
        images = list(
            await asyncio.gather(
                *(
                    self._in_io(to_conditioning_size, image, size)
                    for image, size in zip(images, geometry.inputs, strict=True)
                )
            )
        )
        kept_alpha = None
        if keep and base_alpha is not None:
            # Cropped exactly as the base image was, so the cut-out lines up with the edited pixels.
            kept_alpha = await self._in_io(to_conditioning_size, base_alpha, geometry.output)
        ctx.fetch_ms = (time.perf_counter() - started) * 1000.0
        width, height = geometry.output
        ctx.params = EditParams(
            prompt=request.compiled_prompt,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**32),
            width=width,
            height=height,
            references=len(request.references),
            background=hex6(background),
            alpha="keep" if keep else "flatten",
            guidance_applied=self._editor.uses_guidance(request.guidance_scale),
            loras=[adapter.info for adapter in adapters],
        )
        return PreparedEdit(
            request=request,
            images=images,
            output=output,
            output_format=fmt,
            params=ctx.params,
            alpha=kept_alpha,
            adapters=[adapter.active for adapter in adapters],
            inputs=[fetched for _, fetched in decoded],
        )

    def _resolve_adapter(self, ref: AdapterRef, location: S3Location, name: str) -> ResolvedAdapter:
        return self._adapters.resolve(ref, location, field=name)

    def _fetch_and_decode(
        self, location: S3Location, name: str, background: tuple[int, int, int]
    ) -> tuple[DecodedImage, FetchedInput]:
        data = self._store.fetch(location)
        limits = self._settings.pipeline
        decoded = decode_image(
            data,
            max_pixels=limits.max_input_pixels,
            formats=limits.allowed_formats,
            name=f"{name} ({location.uri})",
            background=background,
        )
        # The pipeline's own size/aspect rules, before any GPU time is spent.
        check_edit_input(decoded.image, name)
        mime = Image.MIME.get(decoded.format)
        return decoded, FetchedInput(name, location.uri, hashlib.sha256(data).hexdigest(), mime)

    # -- stage 2: the GPU --------------------------------------------------------------------------------

    async def edit(
        self,
        ctx: EditContext,
        prepared: PreparedEdit,
        *,
        lane: int = 0,
        before: Callable[[], None] | None = None,
        on_start: Callable[[], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> FinishedEdit:
        """Queue the edit on the GPU lane; `before` runs on the GPU thread first, `on_start` on the loop."""
        params = prepared.params
        job = EditJob(
            images=prepared.images,
            prompt=params.prompt,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
            width=params.width,
            height=params.height,
            on_step=on_step,
            adapters=prepared.adapters,
        )
        gpu_started: list[float] = []

        def run_on_gpu() -> EditOutput:
            gpu_started.append(time.perf_counter())
            if on_step is not None:
                on_step(0, params.num_inference_steps)  # a cancel that came while queued stops it here
            if before is not None:
                before()
            return self._editor.edit(job)

        try:
            result = await self._gpu.submit(run_on_gpu, lane=lane, on_start=on_start)
        finally:
            if gpu_started:
                ctx.gpu_ms = (time.perf_counter() - gpu_started[0]) * 1000.0
                # Canceled or failed mid-edit: the editor reported nothing, so the result's
                # timing_ms.inference is the GPU time actually spent (as gpu_ms), not 0.
                ctx.inference_ms = ctx.gpu_ms
        ctx.inference_ms = result.inference_ms
        ctx.adapter_load_ms += result.adapter_load_ms
        ctx.transformer_passes = result.transformer_passes
        return FinishedEdit(image=result.image)

    # -- stage 3: encode, upload, result ---------------------------------------------------------------

    async def store(self, ctx: EditContext, prepared: PreparedEdit, finished: FinishedEdit) -> EditCompleted:
        started = time.perf_counter()
        alpha = prepared.alpha
        spec = prepared.request.output
        marked = spec is None or spec.metadata is OutputMetadata.MARK
        # Encoding, marking and C2PA signing run together on an I/O thread, never on the GPU thread.
        output = await self._in_io(
            lambda: self._provenance.encode(
                finished.image,
                prepared.output_format,
                alpha=alpha,
                request_id=prepared.request.request_id,
                inputs=prepared.inputs,
                marked=marked,
            )
        )
        data = output.data
        params = prepared.params
        metadata = {
            META_REQUEST_ID: prepared.request.request_id,
            "seed": str(params.seed),
            "width": str(params.width),
            "height": str(params.height),
            "format": prepared.output_format.value,
            "steps": str(params.num_inference_steps),
            "guidance": repr(params.guidance_scale),
            "references": str(params.references),
            "input-megapixels": repr(ctx.input_megapixels),
            "model": self.model_name,
            "background": params.background,
            "alpha": params.alpha,
            "has-alpha": "true" if alpha is not None else "false",
            "color-profile": OUTPUT_PROFILE,
        }
        if params.loras:
            metadata[META_ADAPTERS] = ",".join(f"{info.sha256}:{info.bytes}" for info in params.loras)
        provenance = self._provenance.provenance(params, prepared.inputs, xmp=output.xmp, c2pa=output.c2pa)
        metadata.update(to_metadata(provenance, used=sum(len(k) + len(v) for k, v in metadata.items())))
        outcome = await self._in_io(
            lambda: self._store.put_output(
                prepared.output, data, content_type=prepared.output_format.content_type, metadata=metadata
            )
        )
        ctx.upload_ms = (time.perf_counter() - started) * 1000.0
        if not outcome.created:
            # Another worker finished the same request first; its object is the answer, ours is dropped.
            if outcome.existing is None:
                raise InvalidLocation(f"output.uri: {prepared.output.uri} exists but could not be read back")
            return self._replay_existing(
                ctx, prepared.request, outcome.existing, [item.uri for item in prepared.inputs]
            )
        ctx.provenance = provenance
        return self._succeeded(
            ctx,
            OutputInfo(
                uri=prepared.output.uri,
                width=finished.image.width,
                height=finished.image.height,
                format=prepared.output_format,
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                alpha=alpha is not None,
                color_profile=OUTPUT_PROFILE,
            ),
            params,
        )

    # -- results -----------------------------------------------------------------------------------------

    def _replay_existing(
        self, ctx: EditContext, request: EditRequest, existing: StoredObject, input_uris: list[str]
    ) -> EditCompleted:
        """The answer for a request whose output is already stored: same output, params, cost and
        provenance (the stored one: the worker that made the object may have run other versions)."""
        meta = existing.metadata
        if meta.get(META_REQUEST_ID) != request.request_id:
            raise InvalidLocation(
                f"output.uri: {existing.location.uri} already holds another request's output "
                f"({meta.get(META_REQUEST_ID, 'unknown')}); outputs are never overwritten"
            )
        try:
            width, height = int(meta["width"]), int(meta["height"])
            params = EditParams(
                prompt=request.compiled_prompt,
                num_inference_steps=int(meta.get("steps", request.num_inference_steps)),
                guidance_scale=float(meta.get("guidance", request.guidance_scale)),
                seed=int(meta["seed"]),
                width=width,
                height=height,
                references=int(meta.get("references", len(request.references))),
                background=meta.get("background", WHITE),
                alpha="keep" if meta.get("alpha") == "keep" else "flatten",
                loras=self._stored_adapters(request, meta.get(META_ADAPTERS, "")),
            )
            params = params.model_copy(
                update={"guidance_applied": self._editor.uses_guidance(params.guidance_scale)}
            )
            ctx.input_megapixels = float(meta.get("input-megapixels", 0.0))
            fmt = OutputFormat(meta.get("format", OutputFormat.PNG.value))
        except (KeyError, ValueError) as exc:
            raise InvalidLocation(
                f"output.uri: {existing.location.uri} exists but lacks klein-edit metadata ({exc})"
            ) from exc
        ctx.params = params
        ctx.provenance = from_metadata(meta, input_uris, params)
        info = OutputInfo(
            uri=existing.location.uri,
            width=width,
            height=height,
            format=fmt,
            bytes=existing.size,
            sha256=existing.sha256 or "",
            alpha=meta.get("has-alpha") == "true",
            color_profile=meta.get("color-profile"),
        )
        return self._succeeded(ctx, info, params)

    def _stored_adapters(self, request: EditRequest, stored: str) -> list[AdapterInfo]:
        """`params.loras` of an output stored earlier: hashes and sizes from its metadata, URIs and scales
        from the request (a redelivery carries the same request)."""
        entries = [entry.split(":") for entry in stored.split(",") if entry]
        if len(entries) != len(request.loras):
            raise ValueError(
                f"{META_ADAPTERS} metadata lists {len(entries)} adapters, the request {len(request.loras)}"
            )
        return [
            AdapterInfo(
                uri=self._adapters.locate(ref, field=f"loras[{i}]").uri,
                scale=ref.scale,
                sha256=digest,
                bytes=int(size),
            )
            for i, (ref, (digest, size)) in enumerate(zip(request.loras, entries, strict=True))
        ]

    def _succeeded(self, ctx: EditContext, output: OutputInfo, params: EditParams) -> EditCompleted:
        cost = Cost.for_output(
            width=output.width,
            height=output.height,
            input_megapixels=ctx.input_megapixels,
            usd_per_megapixel=self._settings.cost.usd_per_megapixel,
            adapters=len(params.loras),
            adapter_bytes=sum(info.bytes for info in params.loras),
        )
        return self._event(ctx, EditStatus.SUCCEEDED, output=output, cost=cost, error=None)

    def unsuccessful(self, ctx: EditContext, error: KleinEditError) -> EditCompleted:
        """The `failed` (or `canceled`) result for an error: costs nothing, reports the GPU time used."""
        status = EditStatus.CANCELED if error.code is ErrorCode.CANCELED else EditStatus.FAILED
        cost = Cost.free(
            input_megapixels=ctx.input_megapixels, usd_per_megapixel=self._settings.cost.usd_per_megapixel
        )
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
        return EditCompleted(
            request_id=ctx.request_id,
            status=status,
            output=output,
            cost=cost,
            timing_ms=ctx.timing(),
            error=error,
            params=ctx.params,
            model=self.model_name,
            attempt=ctx.attempt,
            worker=self._worker_name,
            completed_at=datetime.now(UTC),
            metadata=ctx.metadata,
            gpu_ms=round(ctx.gpu_ms, 1),
            warnings=[f"unknown field ignored: {path}" for path in ctx.request.ignored_fields]
            if ctx.request is not None
            else [],
            provenance=ctx.provenance if status is EditStatus.SUCCEEDED else None,
            transformer_passes=ctx.transformer_passes if status is EditStatus.SUCCEEDED else None,
        )

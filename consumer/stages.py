"""The life of one request, as numbered stages: checks, fetch and decode, edit, post-edit checks, upload.

`EditStages.run` reads top to bottom as a diffusers `__call__` does. It knows nothing of Kafka: the
handler (`consumer.handler`) wraps its retry policy around one `run` per attempt and takes the stages'
progress as typed events (`consumer.events`). Blocking work goes to the I/O thread pool, GPU work to the
one `GpuThread`, so the event loop only ever waits. A new check of the output (colour, moderation) is a
new stage between the edit and the upload, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from PIL import Image

from consumer.color_qa import ColorPlan, check_candidates, plan_color_qa
from consumer.context import EditContext
from consumer.events import EditObserver, GpuRunStarting, GpuStarted, StageStarted, StepFinished
from consumer.gpu import GpuThread
from consumer.http.metrics import WorkerMetrics
from consumer.lora_cache import AdapterCache, AdapterResolver, ResolvedAdapter
from consumer.moderation import Moderation
from consumer.outcomes import Outcomes
from consumer.policy import (
    ColorOutOfTolerance,
    DeadlineExceeded,
    Moderated,
    RequestRejected,
)
from consumer.provenance import FetchedInput, OutputSigner, ProvenanceRecorder
from consumer.settings import Settings
from consumer.sink import OUTPUT_PROFILE, StoredEdit, output_metadata, read_stored
from consumer.url_fetch import UrlSource
from pipeline import (
    DecodedImage,
    EditJob,
    Editor,
    EditOutput,
    PromptTooLong,
    check_edit_input,
    decode_image,
    keeps_alpha,
    megapixels,
    plan_geometry,
    to_conditioning_size,
)
from pipeline.images import size_for_area
from schemas.progress import EditStage
from schemas.provenance import ModelRef
from schemas.requests import (
    IMAGE_SIZE_PRESETS,
    WHITE,
    EditRequest,
    OutputAlpha,
    OutputFormat,
    OutputMetadata,
    hex6,
    hex_to_rgb,
)
from schemas.results import ColorQa, EditCompleted, EditParams, ModerationReport, OutputInfo
from storage import (
    FetchedObject,
    InputLocation,
    InputTooLarge,
    InvalidLocation,
    ObjectVersion,
    PutOutcome,
    S3Location,
    StoredObject,
    parse_input_source,
    resolve_output_location,
)

T = TypeVar("T")


class Store(Protocol):
    """What the stages need from S3 (`storage.ImageStore` is the real one, `consumer.fakes.FakeStore` the
    in-memory one)."""

    def fetch(self, location: S3Location) -> bytes: ...
    def describe_adapter(self, location: S3Location) -> ObjectVersion: ...
    def fetch_adapter(self, location: S3Location) -> FetchedObject: ...
    def find_output(self, location: S3Location) -> StoredObject | None: ...
    def put_output(
        self, location: S3Location, data: bytes, *, content_type: str, metadata: dict[str, str]
    ) -> PutOutcome: ...
    def presign(self, location: S3Location, expires_s: int = 3600) -> str: ...


@dataclass(frozen=True)
class Locations:
    """Where a request's objects are: inputs (base first) and adapters (S3 objects or https URLs), and the
    output with its format."""

    inputs: list[InputLocation]
    adapters: list[InputLocation]
    outputs: list[S3Location]  # one per image (num_images); the first is today's single output key
    output_format: OutputFormat

    @property
    def output(self) -> S3Location:
        return self.outputs[0]


@dataclass(frozen=True)
class Conditioning:
    """The inputs as the pipeline is conditioned on them: sized images (base first), the base image's alpha
    when the output keeps it (sized as the output), and what was fetched (for provenance)."""

    images: list[Image.Image]
    alpha: Image.Image | None
    fetched: list[FetchedInput]


class EditStages:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        editor: Editor,
        gpu: GpuThread,
        io: Executor,
        outcomes: Outcomes,
        metrics: WorkerMetrics | None = None,
        signer: OutputSigner | None = None,
        moderation: Moderation | None = None,
        urls: UrlSource | None = None,
    ) -> None:
        """`signer`: embeds a signed C2PA manifest in every marked output; None signs nothing.
        `moderation`: the loaded classifiers; None when the operator turned moderation off.
        `urls`: reads https inputs and adapters (`consumer.url_fetch.UrlFetcher`); None when URL inputs
        are off (`settings.url_inputs.enabled`), which refuses them before any read."""
        self._settings = settings
        self._store = store
        self._editor = editor
        self._gpu = gpu
        self._io = io
        self._outcomes = outcomes
        self._urls = urls
        self._adapters = AdapterResolver(
            settings.s3,
            source=store,
            editor=editor,
            cache=AdapterCache(settings.pipeline.adapter_cache_bytes),
            io=io,
            url_settings=settings.url_inputs,
            urls=urls,
            metrics=metrics,
        )
        self._provenance = ProvenanceRecorder(editor, signer=signer)
        self._moderation = moderation

    @property
    def editor(self) -> Editor:
        return self._editor

    async def run(self, ctx: EditContext, request: EditRequest, observer: EditObserver) -> EditCompleted:
        """Run one attempt at `request`; returns its `succeeded` result.

        Fills `ctx` as it goes (parameters, timings, GPU time), so a failure result can be built from it.
        Raises the typed error of the stage that failed (`KleinEditError`), or whatever the observer
        raises to stop the request (`EditCanceled`).
        """
        ctx.request = request
        ctx.metadata = dict(request.metadata)
        observer.on_event(StageStarted(EditStage.FETCHING))

        # 1. Check the request against this worker's limits, and its prompt against moderation.
        await self._check_limits(request)
        color_plan = plan_color_qa(request, self._settings.color_qa)
        await self._moderate_prompt(ctx, request)

        # 2. Locate its inputs, adapters and output (allow-listed buckets and URL hosts, deterministic
        #    output key).
        locations = self._locate(request)

        # 3. Answer from the stored outputs when every image is there: the sink is idempotent, no GPU
        #    work; a redelivery that finds some of them stored generates only the rest.
        started = time.perf_counter()
        existing = list(
            await asyncio.gather(*(self._in_io(self._store.find_output, loc) for loc in locations.outputs))
        )
        if all(found is not None for found in existing):
            ctx.fetch_ms = (time.perf_counter() - started) * 1000.0
            return await self._answer_from_store(ctx, request, existing, locations)  # type: ignore[arg-type]
        missing = [i for i, found in enumerate(existing) if found is None]

        # 4. Read and check the adapters: a bad one fails the request before any image is read.
        adapters = await self._resolve_adapters(ctx, request, locations)

        # 5. Fetch and decode the inputs, size them for the pipeline (I/O threads), moderate them.
        conditioning = await self._fetch_inputs(ctx, request, locations, adapters)
        ctx.fetch_ms = (time.perf_counter() - started) * 1000.0
        await self._moderate_inputs(ctx, request, conditioning)

        # 6. Edit on the GPU thread, as one job: the missing images (seeds seed + i), or the colour
        #    check's candidates (seed ... seed + N - 1, one kept).
        await observer.before_gpu()
        candidates = color_plan.candidates if color_plan is not None else 1
        indexes = missing if request.num_images > 1 else list(range(candidates))
        generated = await self._edit(ctx, conditioning, adapters, observer, indexes=indexes)

        # 7. Post-edit checks, off the GPU thread: the colour of each target (keep the best candidate,
        #    correct it when asked), then moderation of what would be stored (nothing flagged ever is).
        if request.num_images == 1:
            images = {0: await self._check_color(ctx, color_plan, conditioning, generated)}
        else:
            images = dict(zip(indexes, generated, strict=True))
            if 0 in images:
                images[0] = await self._check_color(ctx, color_plan, conditioning, [images[0]])
        images = await self._moderate_outputs(ctx, images)

        # 8. Encode, mark and upload each output; the result (a failed colour gate keeps its output).
        observer.on_event(StageStarted(EditStage.UPLOADING))
        outputs: dict[int, OutputInfo] = {}
        for index, image in images.items():
            uploaded = await self._upload(ctx, request, locations, conditioning, image, index=index)
            if isinstance(uploaded, EditCompleted):
                return uploaded  # another worker stored it first: its answer
            outputs[index] = uploaded
        for index, found in enumerate(existing):
            if found is not None:  # stored by an earlier delivery
                stored = self._read_stored(request, found, locations)
                outputs[index] = await self._stored_output(stored, locations.outputs[index])
                if index == 0:  # the first image's provenance is the result's
                    ctx.provenance = stored.provenance
        delivered = [outputs[i] for i in sorted(outputs)]
        billed = candidates if request.num_images == 1 else request.num_images
        gate = ctx.color_qa
        if color_plan is not None and color_plan.on_fail == "fail" and gate is not None and not gate.passed:
            error = ColorOutOfTolerance(_out_of_tolerance(gate))
            return self._outcomes.out_of_tolerance(ctx, delivered[0], error, images=billed, outputs=delivered)
        return self._outcomes.succeeded(ctx, delivered[0], images=billed, outputs=delivered)

    # -- 1. limits ---------------------------------------------------------------------------------------

    async def _check_limits(self, request: EditRequest) -> None:
        limits = self._settings.pipeline
        if len(request.references) > limits.max_references:
            raise RequestRejected(
                f"references: {len(request.references)} given, at most {limits.max_references} allowed"
            )
        if request.deadline is not None and datetime.now(UTC) > request.deadline:
            raise DeadlineExceeded(f"deadline {request.deadline.isoformat()} passed before pickup")
        requested = _requested_size(request)
        if requested is not None and requested[0] * requested[1] > limits.max_output_megapixels * 1e6:
            raise RequestRejected(
                f"width x height: {requested[0]}x{requested[1]} = {requested[0] * requested[1] / 1e6:.2f} MP "
                f"exceeds the output limit of {limits.max_output_megapixels:g} MP "
                "(KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)"
            )
        if request.megapixels is not None and request.megapixels > limits.max_output_megapixels:
            raise RequestRejected(
                f"megapixels: {request.megapixels:g} exceeds the output limit of "
                f"{limits.max_output_megapixels:g} MP (KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)"
            )
        tier = request.acceleration or limits.default_acceleration
        if tier != "none" and tier not in limits.acceleration_tiers:
            offered = ", ".join(["none", *sorted(limits.acceleration_tiers)])
            raise RequestRejected(
                f"acceleration: {tier!r} is not offered on this worker (offered: {offered}; "
                "KLEIN_EDIT_PIPELINE__ACCELERATION_TIERS)"
            )
        if request.num_images > limits.max_images:
            raise RequestRejected(
                f"num_images: {request.num_images} asked, at most {limits.max_images} allowed on this worker "
                "(KLEIN_EDIT_PIPELINE__MAX_IMAGES)"
            )
        if len(request.loras) > limits.max_adapters:
            raise RequestRejected(
                f"loras: {len(request.loras)} given, at most {limits.max_adapters} allowed on this worker "
                "(KLEIN_EDIT_PIPELINE__MAX_ADAPTERS)"
            )
        await self._in_io(self._editor.check_prompt, request.compiled_prompt)
        if request.negative_prompt is not None:
            try:
                await self._in_io(self._editor.check_prompt, request.negative_prompt)
            except PromptTooLong as exc:
                raise PromptTooLong(f"negative_{exc.message}") from exc

    # -- 2. locations ------------------------------------------------------------------------------------

    def _locate(self, request: EditRequest) -> Locations:
        s3, urls = self._settings.s3, self._settings.url_inputs
        inputs = [parse_input_source(request.image, s3, urls, field="image")]
        inputs += [
            parse_input_source(ref, s3, urls, field=f"references[{i}]")
            for i, ref in enumerate(request.references)
        ]
        adapters = [self._adapters.locate(ref, field=f"loras[{i}]") for i, ref in enumerate(request.loras)]
        spec = request.output
        fmt = spec.format if spec else OutputFormat.PNG
        output = resolve_output_location(
            spec.uri if spec else None,
            request_id=request.request_id,
            extension=fmt.extension,
            settings=s3,
            inputs=inputs,
        )
        outputs = [output, *(_numbered(output, i) for i in range(1, request.num_images))]
        return Locations(inputs=inputs, adapters=adapters, outputs=outputs, output_format=fmt)

    # -- 3. the stored output ----------------------------------------------------------------------------

    async def _answer_from_store(
        self, ctx: EditContext, request: EditRequest, existing: list[StoredObject], locations: Locations
    ) -> EditCompleted:
        each = [self._read_stored(request, found, locations) for found in existing]
        delivered = [
            await self._stored_output(one, location)
            for one, location in zip(each, locations.outputs, strict=True)
        ]
        stored = each[0]
        ctx.params = stored.params
        ctx.input_megapixels = stored.input_megapixels
        ctx.provenance = stored.provenance
        ctx.color_qa = gate = stored.color_qa
        images = max(1, len(gate.candidates)) if gate is not None else request.num_images
        plan = plan_color_qa(request, self._settings.color_qa)
        if plan is not None and plan.on_fail == "fail" and gate is not None and not gate.passed:
            error = ColorOutOfTolerance(_out_of_tolerance(gate))
            return self._outcomes.out_of_tolerance(ctx, delivered[0], error, images=images, outputs=delivered)
        return self._outcomes.succeeded(ctx, delivered[0], images=images, outputs=delivered)

    def _read_stored(self, request: EditRequest, existing: StoredObject, locations: Locations) -> StoredEdit:
        return read_stored(
            existing,
            request,
            input_uris=[loc.uri for loc in locations.inputs],
            adapter_uris=[loc.uri for loc in locations.adapters],
            uses_guidance=self._editor.uses_guidance,
        )

    async def _stored_output(self, stored: StoredEdit, location: S3Location) -> OutputInfo:
        """The `OutputInfo` of an image stored earlier (a redelivery), with its seed and a fresh link."""
        output = stored.output.model_copy(update={"seed": stored.params.seed})
        return await self._with_link(output, location)

    # -- 4. adapters -------------------------------------------------------------------------------------

    async def _resolve_adapters(
        self, ctx: EditContext, request: EditRequest, locations: Locations
    ) -> list[ResolvedAdapter]:
        adapters = await asyncio.gather(
            *(
                self._adapters.resolve(ref, loc, field=f"loras[{i}]")
                for i, (ref, loc) in enumerate(zip(request.loras, locations.adapters, strict=True))
            )
        )
        ctx.adapter_load_ms = sum(adapter.load_ms for adapter in adapters)
        return list(adapters)

    # -- 5. inputs ---------------------------------------------------------------------------------------

    async def _fetch_inputs(
        self,
        ctx: EditContext,
        request: EditRequest,
        locations: Locations,
        adapters: list[ResolvedAdapter],
    ) -> Conditioning:
        """Fetch and decode every input, then size each to exactly what the pipeline conditions on; sets
        `ctx.params` and `ctx.input_megapixels`."""
        spec = request.output
        names = ["image", *(f"references[{i}]" for i in range(len(request.references)))]
        background = spec.background if spec else WHITE
        decoded = await asyncio.gather(
            *(
                self._fetch_and_decode(loc, name, hex_to_rgb(background))
                for loc, name in zip(locations.inputs, names, strict=True)
            )
        )
        images = [item.image for item, _ in decoded]
        ctx.input_megapixels = sum(megapixels(image) for image in images)
        base_alpha = decoded[0][0].alpha
        keep = keeps_alpha(
            spec.alpha if spec else OutputAlpha.AUTO,
            base_has_alpha=base_alpha is not None,
            fmt=locations.output_format,
            pure_recolor=request.is_pure_recolor,
        )
        # Every input is resized here, on I/O threads, to exactly the size the pipeline conditions on: the
        # GPU thread never resamples a 40 MP photo and the pipeline crops nothing.
        limits = self._settings.pipeline
        geometry = plan_geometry(
            [image.size for image in images],
            _output_size(request, images[0].size, limits.max_megapixels),
            limits.max_megapixels,
        )
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
            negative_prompt=request.negative_prompt
            if self._editor.uses_guidance(request.guidance_scale)
            else None,
            acceleration=request.acceleration or limits.default_acceleration,
        )
        return Conditioning(images=images, alpha=kept_alpha, fetched=[fetched for _, fetched in decoded])

    async def _fetch_and_decode(
        self, location: InputLocation, name: str, background: tuple[int, int, int]
    ) -> tuple[DecodedImage, FetchedInput]:
        """Read one input (S3 on an I/O thread, a URL on the event loop), then decode it on an I/O thread:
        both kinds go through the one decode path and its limits."""
        if isinstance(location, S3Location):
            data = await self._in_io(self._store.fetch, location)
        else:
            if self._urls is None:
                raise RuntimeError("an https input was located, but this worker has no URL reader")
            limit = self._settings.s3.max_image_bytes
            fetched = await self._urls.fetch(location, limit=limit, too_large=InputTooLarge)
            assert fetched is not None  # an unconditional read always has a body
            data = fetched.data
        return await self._in_io(self._decode, data, location, name, background)

    def _decode(
        self, data: bytes, location: InputLocation, name: str, background: tuple[int, int, int]
    ) -> tuple[DecodedImage, FetchedInput]:
        limits = self._settings.pipeline
        decoded = decode_image(
            data,
            max_pixels=limits.max_input_pixels,
            formats=limits.allowed_formats,
            name=f"{name} ({location.uri})",
            background=background,
            # No input is conditioned on more pixels than the larger of these: big JPEGs decode smaller.
            draft_pixels=int(max(limits.max_megapixels, limits.max_output_megapixels) * 1e6),
        )
        # The pipeline's own size/aspect rules, before any GPU time is spent.
        check_edit_input(decoded.image, name)
        mime = Image.MIME.get(decoded.format)
        return decoded, FetchedInput(name, location.uri, hashlib.sha256(data).hexdigest(), mime)

    # -- 6. the GPU --------------------------------------------------------------------------------------

    async def _edit(
        self,
        ctx: EditContext,
        conditioning: Conditioning,
        adapters: list[ResolvedAdapter],
        observer: EditObserver,
        *,
        indexes: list[int],
    ) -> list[Image.Image]:
        """Generate the images `indexes` (seed params.seed + index each) as one job on the GPU thread, one
        after another; `GpuRunStarting` and each `StepFinished` (counted across the images) are delivered
        there, `GpuStarted` on the event loop. A cancel stops it between steps, so between images too."""
        params = ctx.params
        assert params is not None
        steps = params.num_inference_steps
        total = steps * len(indexes)

        def job(position: int, index: int) -> EditJob:
            return EditJob(
                images=conditioning.images,
                prompt=params.prompt,
                num_inference_steps=steps,
                guidance_scale=params.guidance_scale,
                seed=params.seed + index,
                width=params.width,
                height=params.height,
                on_step=lambda done, _: observer.on_event(StepFinished(position * steps + done, total)),
                adapters=[adapter.active for adapter in adapters],
                negative_prompt=params.negative_prompt or "",
                guidance_interval=self._settings.pipeline.acceleration_tiers.get(params.acceleration)  # type: ignore[call-overload]
                if params.acceleration != "none"
                else None,
            )

        gpu_started: list[float] = []

        def run_on_gpu() -> list[EditOutput]:
            gpu_started.append(time.perf_counter())
            observer.on_event(GpuRunStarting(total))  # a cancel that came while queued stops it here
            return [self._editor.edit(job(position, index)) for position, index in enumerate(indexes)]

        try:
            results = await self._gpu.submit(
                run_on_gpu, lane=ctx.lane, on_start=lambda: observer.on_event(GpuStarted(total))
            )
        finally:
            if gpu_started:
                ctx.gpu_ms = (time.perf_counter() - gpu_started[0]) * 1000.0
                # Canceled or failed mid-edit: the editor reported nothing, so the result's
                # timing_ms.inference is the GPU time actually spent (as gpu_ms), not 0.
                ctx.inference_ms = ctx.gpu_ms
        ctx.inference_ms = sum(result.inference_ms for result in results)
        ctx.adapter_load_ms += sum(result.adapter_load_ms for result in results)
        passes = [result.transformer_passes for result in results]
        ctx.transformer_passes = None if None in passes else sum(p for p in passes if p is not None)
        return [result.image for result in results]

    # -- 7. colour -------------------------------------------------------------------------------------

    async def _check_color(
        self,
        ctx: EditContext,
        plan: ColorPlan | None,
        conditioning: Conditioning,
        candidates: list[Image.Image],
    ) -> Image.Image:
        if plan is None:
            return candidates[0]
        params = ctx.params
        assert params is not None
        started = time.perf_counter()
        checked = await self._in_io(
            functools.partial(check_candidates, plan, conditioning.images[0], candidates, seed=params.seed)
        )
        ctx.qa_ms = (time.perf_counter() - started) * 1000.0
        ctx.color_qa = checked.result
        if checked.index:
            ctx.params = params.model_copy(update={"seed": params.seed + checked.index})
        return checked.image

    # -- moderation (1, 5, 7) ------------------------------------------------------------------------

    async def _moderate_prompt(self, ctx: EditContext, request: EditRequest) -> None:
        moderation = self._moderation
        if moderation is None:
            return
        rules = moderation.for_request(request, allow_disable=moderation.settings.allow_request_disable)
        if not rules.enabled:
            return
        ctx.moderation = moderation.report(rules)
        ctx.moderation = await self._moderated(
            ctx, moderation.check_prompt, request.compiled_prompt, ctx.moderation
        )

    async def _moderate_inputs(
        self, ctx: EditContext, request: EditRequest, conditioning: Conditioning
    ) -> None:
        moderation, report = self._moderation, ctx.moderation
        if moderation is None or report is None or not moderation.settings.check_inputs:
            return
        names = ["image", *(f"references[{i}]" for i in range(len(request.references)))]
        images = dict(zip(names, conditioning.images, strict=True))
        ctx.moderation = await self._on_classifier(ctx, moderation, moderation.check_inputs, images, report)

    async def _moderate_outputs(
        self, ctx: EditContext, images: dict[int, Image.Image]
    ) -> dict[int, Image.Image]:
        """The images that may be stored: all when moderation is off; else those not flagged (one image
        flagged, or all of several, raises `OutputModerated`)."""
        moderation, report = self._moderation, ctx.moderation
        if moderation is None or report is None:
            return images
        if len(images) == 1 and ctx.request is not None and ctx.request.num_images == 1:
            (image,) = images.values()
            ctx.moderation = await self._on_classifier(
                ctx, moderation, moderation.check_output, image, report
            )
            return images
        ctx.moderation = report = await self._on_classifier(
            ctx, moderation, moderation.check_outputs, images, report
        )
        # `check_outputs` scores the images in the order given, one `outputs[i]` score each.
        scores = zip(images.items(), report.outputs, strict=True)
        return {index: image for (index, image), score in scores if not score.flagged}

    async def _on_classifier(
        self, ctx: EditContext, moderation: Moderation, check: Callable[..., ModerationReport], *args: Any
    ) -> ModerationReport:
        """Run an image check where the classifier lives: the GPU thread (in the record's lane) or an I/O
        thread; a flagged verdict's report is kept in `ctx` for the failure result."""
        if not moderation.on_gpu:
            return await self._moderated(ctx, check, *args)
        try:
            return await self._gpu.submit(functools.partial(check, *args), lane=ctx.lane)
        except Moderated as exc:
            ctx.moderation = exc.report
            raise

    async def _moderated(
        self, ctx: EditContext, check: Callable[..., ModerationReport], *args: Any
    ) -> ModerationReport:
        try:
            return await self._in_io(check, *args)
        except Moderated as exc:
            ctx.moderation = exc.report
            raise

    # -- 8. upload ---------------------------------------------------------------------------------------

    async def _upload(
        self,
        ctx: EditContext,
        request: EditRequest,
        locations: Locations,
        conditioning: Conditioning,
        edited: Image.Image,
        *,
        index: int = 0,
    ) -> OutputInfo | EditCompleted:
        """Encode, mark and store image `index`; its `OutputInfo`, or the stored answer (an `EditCompleted`)
        when another worker stored this request's output first."""
        started = time.perf_counter()
        assert ctx.params is not None
        params = ctx.params.model_copy(update={"seed": ctx.params.seed + index}) if index else ctx.params
        location = locations.outputs[index]
        alpha = conditioning.alpha
        fmt = locations.output_format
        marked = request.output is None or request.output.metadata is OutputMetadata.MARK
        # Encoding, marking and C2PA signing run together on an I/O thread, never on the GPU thread.
        encoded = await self._in_io(
            lambda: self._provenance.encode(
                edited,
                fmt,
                alpha=alpha,
                request_id=request.request_id,
                inputs=conditioning.fetched,
                marked=marked,
                quality=request.output.quality if request.output else None,
                lossless=bool(request.output and request.output.lossless),
            )
        )
        provenance = self._provenance.provenance(
            params, conditioning.fetched, xmp=encoded.xmp, c2pa=encoded.c2pa
        )
        if ctx.moderation is not None:
            revision = ctx.moderation.revision
            moderated_by = ModelRef(
                id=ctx.moderation.model,
                revision=revision or "",
                revision_source="hub" if revision else "none",
            )
            provenance = provenance.model_copy(update={"moderation": moderated_by})
        metadata = output_metadata(
            request_id=request.request_id,
            params=params,
            fmt=fmt,
            input_megapixels=ctx.input_megapixels,
            model=self._editor.model_name,
            has_alpha=alpha is not None,
            provenance=provenance,
            color_qa=ctx.color_qa,
        )
        outcome = await self._in_io(
            lambda: self._store.put_output(
                location, encoded.data, content_type=fmt.content_type, metadata=metadata
            )
        )
        ctx.upload_ms += (time.perf_counter() - started) * 1000.0
        if not outcome.created:
            if outcome.existing is None:
                raise InvalidLocation(f"output.uri: {location.uri} exists but could not be read back")
            if index:  # a racing worker stored this image too: same request, same seed; keep its object
                return await self._stored_output(
                    self._read_stored(request, outcome.existing, locations), location
                )
            # Another worker finished the same request first; its object is the answer, ours is dropped.
            existing = [
                outcome.existing,
                *(
                    found
                    for found in [
                        await self._in_io(self._store.find_output, loc) for loc in locations.outputs[1:]
                    ]
                    if found is not None
                ),
            ]
            if len(existing) == len(locations.outputs):
                return await self._answer_from_store(ctx, request, existing, locations)
            return await self._stored_output(
                self._read_stored(request, outcome.existing, locations), location
            )
        if not index:
            ctx.provenance = provenance
        output = OutputInfo(
            uri=location.uri,
            width=edited.width,
            height=edited.height,
            format=fmt,
            bytes=len(encoded.data),
            sha256=hashlib.sha256(encoded.data).hexdigest(),
            alpha=alpha is not None,
            color_profile=OUTPUT_PROFILE,
            seed=params.seed,
        )
        return await self._with_link(output, location)

    async def _with_link(self, output: OutputInfo, location: S3Location) -> OutputInfo:
        """`output` with a presigned GET link when the operator sets a lifetime (signed locally)."""
        ttl = self._settings.s3.presign_ttl_s
        if ttl <= 0:
            return output
        # Taken before signing, in whole seconds as SigV4's X-Amz-Date is: the link works at least until
        # `url_expires_at` (X-Amz-Date + X-Amz-Expires is that instant, or the second after it).
        signed_from = datetime.now(UTC).replace(microsecond=0)
        url = await self._in_io(self._store.presign, location, ttl)
        return output.model_copy(update={"url": url, "url_expires_at": signed_from + timedelta(seconds=ttl)})

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


def _numbered(output: S3Location, index: int) -> S3Location:
    """Image `index`'s key beside the first's: `edits/r-1.png` -> `edits/r-1-2.png` for index 2."""
    stem, dot, extension = output.key.rpartition(".")
    key = f"{stem}-{index}.{extension}" if dot else f"{output.key}-{index}"
    return S3Location(output.bucket, key)


def _out_of_tolerance(color_qa: ColorQa) -> str:
    missed = [t for t in color_qa.targets if not t.passed]
    parts = [
        f"{t.target}: {t.achieved or 'not found'} for {t.requested} (CIEDE2000 "
        f"{'n/a' if t.delta_e is None else f'{t.delta_e:.2f}'})"
        for t in missed
    ]
    return (
        f"colour out of tolerance ({color_qa.max_delta_e:g}): "
        + "; ".join(parts)
        + "; the output is stored for review"
    )


def _requested_size(request: EditRequest) -> tuple[int, int] | None:
    """The output size the request names exactly (width/height or a preset), else None."""
    if request.width and request.height:
        return request.width, request.height
    if request.image_size is not None:
        return IMAGE_SIZE_PRESETS[request.image_size]
    return None


def _output_size(
    request: EditRequest, base_size: tuple[int, int], default_megapixels: float
) -> tuple[int, int] | None:
    """The output size from any of the request's size forms (None: the base image's, fitted to the default
    area). `aspect_ratio` and `megapixels` resolve through the one geometry rule (`size_for_area`)."""
    exact = _requested_size(request)
    if exact is not None or (request.aspect_ratio is None and request.megapixels is None):
        return exact
    if request.aspect_ratio in (None, "match_input"):
        aspect = base_size[0] / base_size[1]
    else:
        width, height = (int(part) for part in request.aspect_ratio.split(":"))
        aspect = width / height
    return size_for_area(aspect, request.megapixels or default_megapixels)

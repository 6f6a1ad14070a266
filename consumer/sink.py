"""The idempotent sink's record: the S3 object metadata written with every output, and read back.

Every output object carries enough user metadata to answer a redelivered request without the GPU: the
request id (an output is never overwritten by another request's), the edit's parameters, the input
megapixels billed, the adapters' digests and the provenance of the worker that made it. This module is
the only one that writes or reads that format; S3 allows 2 KB of user metadata per object in all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from consumer.provenance import adapters_of
from schemas.provenance import AdapterInfo, Provenance
from schemas.requests import WHITE, EditRequest, OutputFormat
from schemas.results import ColorQa, EditParams, OutputInfo
from storage import InvalidLocation, StoredObject

META_REQUEST_ID = "request-id"
# "<sha256>:<bytes>" of each adapter, comma-separated in request order (URIs and scales are the request's).
META_ADAPTERS = "adapters"
# The provenance (JSON, ASCII; the inputs' URIs and the adapters left out: a redelivered request names the
# same inputs, and its params.loras are replayed already).
META_PROVENANCE = "provenance"
# The colour check's result block (JSON), so a redelivered recolour is answered with the same figures.
META_COLOR_QA = "color-qa"
_META_BUDGET = 1800  # bytes of S3's 2 KB of user metadata this module may use
OUTPUT_PROFILE = "sRGB"  # every output is encoded in sRGB with that ICC profile embedded


def output_metadata(
    *,
    request_id: str,
    params: EditParams,
    fmt: OutputFormat,
    input_megapixels: float,
    model: str,
    has_alpha: bool,
    provenance: Provenance | None,
    color_qa: ColorQa | None = None,
) -> dict[str, str]:
    """The user metadata stored with an output; the provenance, then the colour check, are left out when
    they would not fit (a redelivery then reports none)."""
    metadata = {
        META_REQUEST_ID: request_id,
        "seed": str(params.seed),
        "width": str(params.width),
        "height": str(params.height),
        "format": fmt.value,
        "steps": str(params.num_inference_steps),
        "guidance": repr(params.guidance_scale),
        "references": str(params.references),
        "input-megapixels": repr(input_megapixels),
        "model": model,
        "background": params.background,
        "alpha": params.alpha,
        "has-alpha": "true" if has_alpha else "false",
        "color-profile": OUTPUT_PROFILE,
    }
    if params.loras:
        metadata[META_ADAPTERS] = ",".join(f"{info.sha256}:{info.bytes}" for info in params.loras)
    if provenance is not None:
        metadata.update(_provenance_metadata(provenance, used=_used(metadata)))
    if color_qa is not None:
        text = color_qa.model_dump_json(exclude_defaults=True)
        if _used(metadata) + len(META_COLOR_QA) + len(text) <= _META_BUDGET and text.isascii():
            metadata[META_COLOR_QA] = text
    return metadata


def _used(metadata: dict[str, str]) -> int:
    return sum(len(k) + len(v) for k, v in metadata.items())


@dataclass(frozen=True)
class StoredEdit:
    """An output found in S3 for the request being answered, as its metadata describes it."""

    params: EditParams
    input_megapixels: float
    output: OutputInfo
    provenance: Provenance | None
    color_qa: ColorQa | None = None


def read_stored(
    existing: StoredObject,
    request: EditRequest,
    *,
    input_uris: Sequence[str],
    adapter_uris: Sequence[str],
    uses_guidance: Callable[[float], bool],
) -> StoredEdit:
    """What a stored output says of the edit that made it: same output, params, cost and provenance (the
    stored one: the worker that made the object may have run other versions).

    `input_uris` and `adapter_uris` are the request's, in request order. Raises `InvalidLocation` when the
    object holds another request's output or lacks klein-edit metadata.
    """
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
            loras=_stored_adapters(request, meta.get(META_ADAPTERS, ""), adapter_uris),
        )
        guided = uses_guidance(params.guidance_scale)
        params = params.model_copy(
            update={
                "guidance_applied": guided,
                "negative_prompt": request.negative_prompt if guided else None,
            }
        )
        input_megapixels = float(meta.get("input-megapixels", 0.0))
        fmt = OutputFormat(meta.get("format", OutputFormat.PNG.value))
    except (KeyError, ValueError) as exc:
        raise InvalidLocation(
            f"output.uri: {existing.location.uri} exists but lacks klein-edit metadata ({exc})"
        ) from exc
    output = OutputInfo(
        uri=existing.location.uri,
        width=width,
        height=height,
        format=fmt,
        bytes=existing.size,
        sha256=existing.sha256 or "",
        alpha=meta.get("has-alpha") == "true",
        color_profile=meta.get("color-profile"),
    )
    return StoredEdit(
        params=params,
        input_megapixels=input_megapixels,
        output=output,
        provenance=_stored_provenance(meta, input_uris, params),
        color_qa=_stored_color_qa(meta),
    )


def _stored_color_qa(metadata: dict[str, str]) -> ColorQa | None:
    text = metadata.get(META_COLOR_QA)
    if not text:
        return None
    try:
        return ColorQa.model_validate_json(text)
    except ValidationError:
        return None


def _stored_adapters(request: EditRequest, stored: str, adapter_uris: Sequence[str]) -> list[AdapterInfo]:
    """`params.loras` of an output stored earlier: hashes and sizes from its metadata, URIs and scales from
    the request (a redelivery carries the same request)."""
    entries = [entry.split(":") for entry in stored.split(",") if entry]
    if len(entries) != len(request.loras):
        raise ValueError(
            f"{META_ADAPTERS} metadata lists {len(entries)} adapters, the request {len(request.loras)}"
        )
    return [
        AdapterInfo(uri=uri, scale=ref.scale, sha256=digest, bytes=int(size))
        for ref, uri, (digest, size) in zip(request.loras, adapter_uris, entries, strict=True)
    ]


def _provenance_metadata(provenance: Provenance, *, used: int) -> dict[str, str]:
    """The provenance as one metadata entry; empty (the replay then reports no provenance) if it would not
    fit beside the `used` bytes."""
    data = provenance.model_dump(mode="json", exclude_defaults=True, exclude={"adapters"})
    data["inputs"] = [item["sha256"] for item in data["inputs"]]
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, sort_keys=True)
    if used + len(META_PROVENANCE) + len(text) > _META_BUDGET:
        return {}
    return {META_PROVENANCE: text}


def _stored_provenance(
    metadata: dict[str, str], input_uris: Sequence[str], params: EditParams
) -> Provenance | None:
    """The provenance `_provenance_metadata` stored, completed with the inputs' URIs of the request being
    answered and the adapters of its (replayed) `params`; None for objects stored without one (older
    workers, or too large)."""
    text = metadata.get(META_PROVENANCE)
    if not text:
        return None
    try:
        data = json.loads(text)
        hashes = data["inputs"]
        if len(hashes) != len(input_uris):
            return None
        data["inputs"] = [{"uri": uri, "sha256": sha} for uri, sha in zip(input_uris, hashes, strict=True)]
        return Provenance.model_validate(data).model_copy(update={"adapters": adapters_of(params)})
    except (ValueError, KeyError, TypeError, ValidationError):
        return None

"""`klein-edit submit`: build a request from flags, stage local images in S3, publish, optionally wait."""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import re
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumer.client import EditClient
from consumer.codec import describe_validation_error
from consumer.settings import Settings
from schemas.requests import EditRequest
from schemas.results import EditCompleted
from storage import ImageStore, S3Location


def build_request(settings: Settings, args: argparse.Namespace) -> EditRequest:
    request_id = args.request_id or new_request_id()
    store: ImageStore | None = None

    def stage(ref: str, name: str) -> str:
        nonlocal store
        path = Path(ref)
        if ref.startswith("s3://") or not path.is_file():
            return ref
        store = store or ImageStore(settings.s3)
        location = S3Location(settings.s3.input_bucket, f"uploads/{request_id}/{name}{path.suffix.lower()}")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        store.put_object(location, path.read_bytes(), content_type=content_type)
        return location.uri

    body: dict[str, Any] = {
        "request_id": request_id,
        "image": stage(args.image, "image"),
        "references": [stage(ref, f"reference-{i}") for i, ref in enumerate(args.reference)],
    }
    optional = {
        "prompt": args.prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.recolor:
        body["recolor"] = [parse_recolor_flag(item) for item in args.recolor]
    if args.format or args.output_uri:
        body["output"] = {k: v for k, v in {"uri": args.output_uri, "format": args.format}.items() if v}
    if args.progress:
        body["progress"] = True
    try:
        return EditRequest.model_validate(body)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from exc


async def submit(
    settings: Settings, request: EditRequest, *, wait: bool, timeout_s: float, topic: str | None = None
) -> EditCompleted | None:
    async with EditClient(settings.kafka) as client:
        if wait:
            await client.watch_results()
        await client.submit(request, topic=topic)
        if not wait:
            return None
        return await asyncio.wait_for(client.wait_for(request.request_id, timeout_s=timeout_s), timeout_s + 5)


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


_RECOLOR_FLAG = re.compile(r"^(?P<target>.+)=(?P<color>#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?)$")


def parse_recolor_flag(value: str) -> dict[str, str]:
    match = _RECOLOR_FLAG.match(value)
    if not match:
        raise ValueError(f"--recolor {value!r}: expected TARGET=#RRGGBB, e.g. 'the sneakers=#1E90FF'")
    return {"target": match["target"].strip(), "color": match["color"]}

"""`klein-edit submit`: build a request from flags, stage local images in S3, publish, optionally wait.

Everything that can be checked here is checked before anything leaves the machine: the flags, the
request itself (the same model the worker decodes), the local files and the output location. Then
the broker connection is opened, and only then are local files uploaded, so a rejected or
unreachable submit never leaves an orphan object in S3.

The Kafka client, the S3 store and the image decoder are imported in the functions that use them, not
with this module: the parser is built from it on every `klein-edit --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from consumer.cli.command import (
    CommandFailed,
    add_command,
    configured,
    kafka_unreachable,
    positive_float,
    storage_failed,
)
from pipeline.errors import InvalidImage
from schemas.errors import KleinEditError
from schemas.requests import HEX_COLOR_PATTERN, REQUEST_ID_PATTERN, EditRequest, OutputFormat
from schemas.results import EditCompleted

if TYPE_CHECKING:
    from consumer.settings import Settings
    from storage import ImageStore, S3Location


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "submit",
        "publish one edit request built from flags; with --wait, print its result",
        description="Build an edit request from flags, check it, upload local images to the input bucket "
        "(s3://<input bucket>/uploads/<request id>/), publish it, and with --wait print the result event "
        "(exit 0 only if the edit succeeded).",
        epilog="example:\n  klein-edit submit --image shot.png --recolor 'the sneakers=#1E90FF' --wait "
        "--out edited.png",
    )
    parser.add_argument(
        "--image",
        required=True,
        metavar="FILE|S3_URI",
        help="the image to edit: a local file (uploaded first) or s3://bucket/key (required)",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="FILE|S3_URI",
        help="a reference image, same forms as --image; repeatable, at most "
        "KLEIN_EDIT_PIPELINE__MAX_REFERENCES (default: none)",
    )
    parser.add_argument(
        "--prompt",
        metavar="TEXT",
        help="the edit instruction, 1-2000 characters; required unless --recolor is given (default: none)",
    )
    parser.add_argument(
        "--recolor",
        action="append",
        default=[],
        metavar="TARGET=#HEX",
        help="recolour TARGET to #RRGGBB or #RGB, e.g. 'the sneakers=#1E90FF'; repeatable, at most 16 "
        "(default: none)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="denoising steps, an integer 25-50 (default: 50)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="SCALE",
        help="guidance scale, a number 0-30 (default: 4.0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="random seed, an integer 0 to 2**63-1 (default: the worker picks one and reports it)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="PIXELS",
        help="output width in pixels, a multiple of 16, 64-4096, with --height (default: the input's "
        "size scaled to at most KLEIN_EDIT_PIPELINE__MAX_MEGAPIXELS)",
    )
    parser.add_argument(
        "--height",
        type=int,
        default=None,
        metavar="PIXELS",
        help="output height in pixels, a multiple of 16, 64-4096, with --width (default: like --width, the "
        "input's size scaled to at most KLEIN_EDIT_PIPELINE__MAX_MEGAPIXELS)",
    )
    parser.add_argument(
        "--format",
        choices=["png", "jpeg", "webp"],
        default=None,
        help="output image format: png, jpeg or webp (default: png)",
    )
    parser.add_argument(
        "--output-uri",
        default=None,
        metavar="S3_URI",
        help="where the worker writes the output, inside its output bucket and prefix (default: "
        "s3://<output bucket>/edits/<request id>.<format>)",
    )
    parser.add_argument(
        "--request-id",
        default=None,
        metavar="ID",
        help="the idempotency key, 1-128 characters of A-Za-z0-9._:- (default: req-<16 random hex>)",
    )
    parser.add_argument(
        "--topic",
        default=None,
        metavar="TOPIC",
        help="the request topic, e.g. a priority lane (default: KLEIN_EDIT_KAFKA__REQUEST_TOPIC, "
        "edit.requests)",
    )
    parser.add_argument(
        "--progress", action="store_true", help="ask the worker for progress events (default: off)"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the result and print it; exit 1 unless it succeeded (default: off)",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="save the edited image to FILE; implies --wait (default: not saved)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=900.0,
        metavar="SECONDS",
        help="how long --wait waits for the result, in seconds, more than 0 (default: 900)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from consumer.kafka.clients import TopicsMissing

    settings = configured(args)
    try:
        submission = prepare_submission(settings, args)
    except SubmitRejected as exc:
        raise CommandFailed(str(exc)) from exc
    wait = args.wait or submission.out is not None
    topic = args.topic or settings.kafka.request_topic

    async def submit_and_wait() -> int:
        try:
            result = await submit(settings, submission, wait=wait, timeout_s=args.timeout, topic=topic)
        except TopicsMissing as exc:
            raise CommandFailed(str(exc)) from exc
        except KafkaError as exc:
            raise kafka_unreachable(settings, exc) from exc
        except KleinEditError as exc:
            raise storage_failed(settings, exc) from exc
        except TimeoutError as exc:
            raise CommandFailed(
                f"{exc}; is a worker running (`klein-edit worker`) on {topic}? Raise --timeout (seconds) "
                "for a long edit"
            ) from exc
        if result is None:
            print(json.dumps({"submitted": submission.request.request_id, "topic": topic}))
            return 0
        print(result.model_dump_json(indent=2))
        if result.output is None:
            error = f" with {result.error.code}: {result.error.message}" if result.error else ""
            raise CommandFailed(
                f"edit {result.request_id} {result.status}{error} (the result event is on stdout)"
            )
        if submission.out is not None:
            try:
                await download(settings, result, submission.out)
            except KleinEditError as exc:
                raise storage_failed(settings, exc) from exc
            print(f"saved {result.output.uri} to {submission.out}", file=sys.stderr)
        return 0

    return asyncio.run(submit_and_wait())


_RECOLOR_FLAG = re.compile(r"^(?P<target>.+)=(?P<color>#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?)$")


# The request's wire fields and the flags that set them, so a rejection names what the user typed.
SUBMIT_FLAGS: dict[str, str] = {
    "request_id": "--request-id",
    "image": "--image",
    "references": "--reference",
    "prompt": "--prompt",
    "recolor": "--recolor",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "seed": "--seed",
    "width": "--width",
    "height": "--height",
    "output.uri": "--output-uri",
    "output.format": "--format",
}
# Model-level rules, said in flags.
_RULES_IN_FLAGS = {
    "either prompt or recolor is required": "give --prompt or --recolor",
    "width and height must be given together": "give --width and --height together",
}
_ALLOWED_CHARACTERS = {
    REQUEST_ID_PATTERN: "1-128 characters, each a letter, a digit or one of . _ : -",
    HEX_COLOR_PATTERN: "#RRGGBB or #RGB",
}


class SubmitRejected(ValueError):
    """The flags do not make a request this worker would accept; the message says which and why."""


@dataclass(frozen=True)
class Upload:
    """A local file and the input-bucket object it becomes."""

    path: Path
    location: S3Location


@dataclass(frozen=True)
class Submission:
    """A validated request, the local files it needs in S3 first, and where to save the result."""

    request: EditRequest
    uploads: tuple[Upload, ...]
    out: Path | None


def prepare_submission(settings: Settings, args: argparse.Namespace) -> Submission:
    """Check the flags and build the request. Touches no network; raises `SubmitRejected`.

    `--image` and `--reference` are `s3://bucket/key` or a local file (uploaded to
    `s3://<input bucket>/uploads/<request_id>/`).
    """
    from pipeline.images import identify_image
    from storage import S3Location, parse_input_source, resolve_output_location

    request_id = args.request_id or new_request_id()
    uploads: list[Upload] = []

    def image_ref(ref: str, name: str, flag: str) -> str:
        if ref.startswith("s3://"):
            return ref
        path = Path(ref)
        if not path.is_file():
            raise SubmitRejected(f"{flag} {ref}: no such file (an object in S3 is given as s3://bucket/key)")
        size = path.stat().st_size
        if size > settings.s3.max_image_bytes:
            raise SubmitRejected(
                f"{flag} {ref}: {size} bytes, more than the {settings.s3.max_image_bytes} the worker reads "
                "(KLEIN_EDIT_S3__MAX_IMAGE_BYTES)"
            )
        try:
            # The worker would fail it with INVALID_IMAGE after the upload: say so before anything leaves.
            identify_image(path.read_bytes(), formats=settings.pipeline.allowed_formats, name=f"{flag} {ref}")
        except InvalidImage as exc:
            raise SubmitRejected(exc.message) from exc
        location = S3Location(settings.s3.input_bucket, f"uploads/{request_id}/{name}{path.suffix.lower()}")
        uploads.append(Upload(path, location))
        return location.uri

    body: dict[str, Any] = {
        "request_id": request_id,
        "image": image_ref(args.image, "image", "--image"),
        "references": [
            image_ref(ref, f"reference-{i}", "--reference") for i, ref in enumerate(args.reference)
        ],
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
    try:
        if args.recolor:
            body["recolor"] = [parse_recolor_flag(item) for item in args.recolor]
    except ValueError as exc:
        raise SubmitRejected(str(exc)) from exc
    if args.format or args.output_uri:
        body["output"] = {k: v for k, v in {"uri": args.output_uri, "format": args.format}.items() if v}
    if args.progress:
        body["progress"] = True
    try:
        request = EditRequest.model_validate(body)
    except ValidationError as exc:
        raise SubmitRejected(describe_flag_errors(exc, SUBMIT_FLAGS)) from exc
    if len(request.references) > settings.pipeline.max_references:
        raise SubmitRejected(
            f"--reference: {len(request.references)} given, the worker takes at most "
            f"{settings.pipeline.max_references} (KLEIN_EDIT_PIPELINE__MAX_REFERENCES)"
        )
    spec = request.output
    try:
        # The worker's own checks: readable input buckets, an output inside the output bucket and prefix.
        inputs = [
            parse_input_source(ref, settings.s3, settings.url_inputs, field=field)
            for field, ref in [("image", request.image)]
            + [(f"references[{i}]", ref) for i, ref in enumerate(request.references)]
        ]
        resolve_output_location(
            spec.uri if spec else None,
            request_id=request.request_id,
            extension=(spec.format if spec else OutputFormat.PNG).extension,
            settings=settings.s3,
            inputs=inputs,
        )
    except KleinEditError as exc:
        raise SubmitRejected(exc.message) from exc
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise SubmitRejected(f"--out {args.out}: no such directory {out.parent}")
    return Submission(request=request, uploads=tuple(uploads), out=out)


async def submit(
    settings: Settings, submission: Submission, *, wait: bool, timeout_s: float, topic: str | None = None
) -> EditCompleted | None:
    """Connect, upload the local files, publish the request; with `wait`, return its result.

    Raises aiokafka's `KafkaError` when the broker cannot be reached (before any upload),
    `storage.StorageError` when an upload fails, and `TimeoutError` when no result arrives in time.
    """
    from consumer.cli.local_client import EditClient
    from storage import ImageStore

    loop = asyncio.get_running_loop()
    async with EditClient(settings.kafka) as client:
        if wait:
            await client.watch_results()
        if submission.uploads:
            store = ImageStore(settings.s3)
            for upload in submission.uploads:
                await loop.run_in_executor(None, _upload, store, upload)
        await client.submit(submission.request, topic=topic)
        if not wait:
            return None
        return await client.wait_for(submission.request.request_id, timeout_s=timeout_s)


async def download(settings: Settings, result: EditCompleted, out: Path) -> None:
    """Save the output object of a succeeded `result` to `out`."""
    from storage import ImageStore, S3Location

    assert result.output is not None
    bucket, key = result.output.uri.removeprefix("s3://").split("/", 1)
    data = await asyncio.to_thread(ImageStore(settings.s3).fetch, S3Location(bucket, key))
    await asyncio.to_thread(out.write_bytes, data)


def _upload(store: ImageStore, upload: Upload) -> None:
    content_type = mimetypes.guess_type(upload.path.name)[0] or "application/octet-stream"
    store.put_object(upload.location, upload.path.read_bytes(), content_type=content_type)


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


def parse_recolor_flag(value: str) -> dict[str, str]:
    match = _RECOLOR_FLAG.match(value)
    if not match:
        raise ValueError(f"--recolor {value!r}: expected TARGET=#RRGGBB or #RGB, e.g. 'the sneakers=#1E90FF'")
    return {"target": match["target"].strip(), "color": match["color"]}


def describe_flag_errors(exc: ValidationError, flags: Mapping[str, str]) -> str:
    """The problems of a model built from flags, one per `; `, each naming the flag (`flags` maps a
    field path such as `output.uri` to it) in plain words, e.g. `--steps: at least 25 (got 7)`."""
    problems = []
    for error in exc.errors(include_url=False):
        fields = [str(part) for part in error["loc"] if isinstance(part, str)]
        flag = next(
            (flags[".".join(fields[:n])] for n in range(len(fields), 0, -1) if ".".join(fields[:n]) in flags),
            ".".join(fields),
        )
        message = _plain(error)
        if not flag:
            problems.append(_RULES_IN_FLAGS.get(message, message))
            continue
        shown = error.get("input")
        got = f" (got {shown!r})" if isinstance(shown, int | float | str) and len(str(shown)) <= 200 else ""
        problems.append(f"{flag}: {message}{got}")
    return "; ".join(problems)


def _plain(error: Any) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "greater_than_equal":
        return f"at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"at most {ctx['le']}"
    if kind == "greater_than":
        return f"more than {ctx['gt']}"
    if kind == "less_than":
        return f"less than {ctx['lt']}"
    if kind == "multiple_of":
        return f"a multiple of {ctx['multiple_of']}"
    if kind == "string_too_long":
        return f"at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        return _ALLOWED_CHARACTERS.get(ctx.get("pattern", ""), str(error["msg"]))
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])

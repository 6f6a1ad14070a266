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
from schemas.requests import (
    HEX_COLOR_PATTERN,
    IMAGE_SIZE_PRESETS,
    NOT_BLANK,
    REQUEST_ID_PATTERN,
    EditRequest,
    OutputFormat,
)
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
        metavar="FILE|S3_URI|URL",
        help="the image to edit: a local file (uploaded first), s3://bucket/key, or an https:// URL for a "
        "worker with URL inputs on (KLEIN_EDIT_URL_INPUTS__ENABLED) (required)",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="FILE|S3_URI|URL",
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
        "--image-size",
        type=image_size,
        default=None,
        metavar="PRESET|WxH",
        help=f"output size instead of --width/--height: a preset ({', '.join(IMAGE_SIZE_PRESETS)}) or "
        "WIDTHxHEIGHT in pixels, each a multiple of 16, 64-4096, e.g. 768x1024 (default: the input's size "
        "scaled to at most KLEIN_EDIT_PIPELINE__MAX_MEGAPIXELS)",
    )
    parser.add_argument(
        "--aspect-ratio",
        choices=["1:1", "4:3", "3:4", "16:9", "9:16", "match_input"],
        default=None,
        help="output aspect instead of --width/--height: 1:1, 4:3, 3:4, 16:9, 9:16 or match_input (the "
        "input's), at --megapixels or the worker's default area (default: the input's aspect)",
    )
    parser.add_argument(
        "--megapixels",
        type=float,
        default=None,
        metavar="MP",
        help="output area in megapixels, a number 0.25-16, at most "
        "KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS (default: KLEIN_EDIT_PIPELINE__MAX_MEGAPIXELS)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        default=None,
        metavar="N",
        help="images to generate, an integer 1-4 (at most KLEIN_EDIT_PIPELINE__MAX_IMAGES), seeds --seed, "
        "--seed+1, ...; each is its own object and is billed (default: 1)",
    )
    parser.add_argument(
        "--negative-prompt",
        default=None,
        metavar="TEXT",
        help="what to steer away from, 1-2000 characters; used only with guidance (--guidance more "
        "than 1) (default: none)",
    )
    parser.add_argument(
        "--acceleration",
        choices=["none", "regular", "high"],
        default=None,
        help="speed tier: none runs every pass, regular and high skip some as the operator defined them "
        "(KLEIN_EDIT_PIPELINE__ACCELERATION_TIERS) (default: KLEIN_EDIT_PIPELINE__DEFAULT_ACCELERATION)",
    )
    parser.add_argument(
        "--format",
        choices=["png", "jpeg", "webp"],
        default=None,
        help="output image format: png, jpeg or webp (default: png)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=None,
        metavar="N",
        help="encoder quality for --format jpeg or webp, an integer 1-100; with --lossless the webp "
        "effort (default: 95)",
    )
    parser.add_argument(
        "--lossless",
        action="store_true",
        help="lossless encoding, with --format webp only (default: off)",
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
        help="save the edited image to FILE (with --num-images, image i also to FILE's name with -i before "
        "its suffix); implies --wait (default: not saved)",
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
                saved = await download(settings, result, submission.out)
            except KleinEditError as exc:
                raise storage_failed(settings, exc) from exc
            for uri, path in saved:
                print(f"saved {uri} to {path}", file=sys.stderr)
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
    "image_size": "--image-size",
    "aspect_ratio": "--aspect-ratio",
    "megapixels": "--megapixels",
    "num_images": "--num-images",
    "negative_prompt": "--negative-prompt",
    "acceleration": "--acceleration",
    "output.uri": "--output-uri",
    "output.format": "--format",
    "output.quality": "--quality",
    "output.lossless": "--lossless",
}
# Model-level rules, said in flags.
_RULES_IN_FLAGS = {
    "either prompt or recolor is required": "give --prompt or --recolor",
    "width and height must be given together": "give --width and --height together",
    "quality applies to jpeg and webp; png is lossless": "--quality applies to --format jpeg or webp; png "
    "is lossless",
    "lossless applies to webp only, not jpeg": "--lossless needs --format webp, not jpeg",
    "lossless applies to webp only, not png": "--lossless needs --format webp, not png",
}
# Fields named in model-level messages (e.g. "image_size and aspect_ratio conflict: ..."), as flags.
_FIELDS_IN_MESSAGES = {
    "width/height": "--width/--height",
    "image_size": "--image-size",
    "aspect_ratio": "--aspect-ratio",
    "megapixels": "--megapixels",
}
_ALLOWED_CHARACTERS = {
    REQUEST_ID_PATTERN: "1-128 characters, each a letter, a digit or one of . _ : -",
    HEX_COLOR_PATTERN: "#RRGGBB or #RGB",
    NOT_BLANK: "not blank",
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

    `--image` and `--reference` are `s3://bucket/key`, an `https://` URL (sent as it is, for a worker
    with URL inputs on) or a local file (uploaded to `s3://<input bucket>/uploads/<request_id>/`).
    """
    from pipeline.images import identify_image
    from storage import S3Location, parse_input_source, resolve_output_location

    request_id = args.request_id or new_request_id()
    uploads: list[Upload] = []

    def image_ref(ref: str, name: str, flag: str) -> str:
        if ref.startswith(("s3://", "https://")):
            return ref  # checked below against the worker's buckets and URL-input settings
        path = Path(ref)
        if not path.is_file():
            raise SubmitRejected(
                f"{flag} {ref}: no such file (an object in S3 is given as s3://bucket/key, a URL as https://...)"
            )
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
    width, height, preset = args.width, args.height, args.image_size
    sized_by_wxh = isinstance(preset, tuple)
    if isinstance(preset, tuple):  # --image-size WxH is --width and --height in one flag
        if width is not None or height is not None:
            raise SubmitRejected(
                "--image-size and --width/--height conflict: give one way of sizing the output"
            )
        (width, height), preset = preset, None
    optional = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "width": width,
        "height": height,
        "image_size": preset,
        "aspect_ratio": args.aspect_ratio,
        "megapixels": args.megapixels,
        "num_images": args.num_images,
        "acceleration": args.acceleration,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    try:
        if args.recolor:
            body["recolor"] = [parse_recolor_flag(item) for item in args.recolor]
    except ValueError as exc:
        raise SubmitRejected(str(exc)) from exc
    output = {
        "uri": args.output_uri,
        "format": args.format,
        "quality": args.quality,
        "lossless": True if args.lossless else None,
    }
    if any(v is not None for v in output.values()):
        body["output"] = {k: v for k, v in output.items() if v is not None}
    if args.progress:
        body["progress"] = True
    try:
        request = EditRequest.model_validate(body)
    except ValidationError as exc:
        if not sized_by_wxh:
            raise SubmitRejected(describe_flag_errors(exc, SUBMIT_FLAGS)) from exc
        flags = {**SUBMIT_FLAGS, "width": "--image-size (width)", "height": "--image-size (height)"}
        problems = describe_flag_errors(exc, flags).replace("--width/--height", "--image-size")
        raise SubmitRejected(problems) from exc
    if len(request.references) > settings.pipeline.max_references:
        raise SubmitRejected(
            f"--reference: {len(request.references)} given, the worker takes at most "
            f"{settings.pipeline.max_references} (KLEIN_EDIT_PIPELINE__MAX_REFERENCES)"
        )
    if request.num_images > settings.pipeline.max_images:
        raise SubmitRejected(
            f"--num-images: {request.num_images} asked, the worker makes at most "
            f"{settings.pipeline.max_images} (KLEIN_EDIT_PIPELINE__MAX_IMAGES)"
        )
    if request.width is not None and request.height is not None:
        area = request.width * request.height / 1e6
        if area > settings.pipeline.max_output_megapixels:
            raise SubmitRejected(
                f"--width/--height: {request.width}x{request.height} is {area:.2f} MP, the worker makes "
                f"at most {settings.pipeline.max_output_megapixels:g} "
                "(KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)"
            )
    if request.megapixels is not None and request.megapixels > settings.pipeline.max_output_megapixels:
        raise SubmitRejected(
            f"--megapixels: {request.megapixels:g}, the worker makes at most "
            f"{settings.pipeline.max_output_megapixels:g} (KLEIN_EDIT_PIPELINE__MAX_OUTPUT_MEGAPIXELS)"
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


async def download(settings: Settings, result: EditCompleted, out: Path) -> list[tuple[str, Path]]:
    """Save the output objects of a succeeded `result`: the first to `out`, image i of several
    (`--num-images`) beside it as `<stem>-i<suffix>`, as the worker names its objects. Returns each
    object's URI and the file it was saved to."""
    from storage import ImageStore, S3Location

    assert result.output is not None
    store = ImageStore(settings.s3)
    saved = []
    for index, output in enumerate(result.outputs or [result.output]):
        path = out.with_name(f"{out.stem}-{index}{out.suffix}") if index else out
        bucket, key = output.uri.removeprefix("s3://").split("/", 1)
        data = await asyncio.to_thread(store.fetch, S3Location(bucket, key))
        await asyncio.to_thread(path.write_bytes, data)
        saved.append((output.uri, path))
    return saved


def _upload(store: ImageStore, upload: Upload) -> None:
    content_type = mimetypes.guess_type(upload.path.name)[0] or "application/octet-stream"
    store.put_object(upload.location, upload.path.read_bytes(), content_type=content_type)


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:16]}"


_SIZE_FLAG = re.compile(r"^(?P<width>\d+)[xX](?P<height>\d+)$")


def image_size(value: str) -> str | tuple[int, int]:
    """`--image-size`: a preset's name, or `WIDTHxHEIGHT` as a (width, height) pair (the request's width
    and height, whose multiple-of-16 and 64-4096 rules the request model checks)."""
    if value in IMAGE_SIZE_PRESETS:
        return value
    match = _SIZE_FLAG.match(value)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a preset ({', '.join(IMAGE_SIZE_PRESETS)}) nor WIDTHxHEIGHT, e.g. 768x1024"
        )
    return int(match["width"]), int(match["height"])


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
        if not flag or flag == "output":
            problems.append(_RULES_IN_FLAGS.get(message) or _fields_as_flags(message))
            continue
        shown = error.get("input")
        got = f" (got {shown!r})" if isinstance(shown, int | float | str) and len(str(shown)) <= 200 else ""
        problems.append(f"{flag}: {message}{got}")
    return "; ".join(problems)


def _fields_as_flags(message: str) -> str:
    for field, flag in _FIELDS_IN_MESSAGES.items():
        message = re.sub(rf"(?<![\w/-]){re.escape(field)}(?![\w/])", flag, message)
    return message


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

"""The commands users run: `submit --wait`, `demo`, and a request from a librdkafka-based client."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from PIL import Image

from consumer.settings import Settings
from pipeline import Editor
from pipeline.images import size_for_area
from schemas.results import USD_DECIMALS, EditCompleted, EditStatus
from storage import ImageStore
from tests.consumer.harness import (
    output_objects,
    png_bytes,
    prepare,
    running_worker,
    settings_env,
    stage_image,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
KLEIN_EDIT = str(Path(sys.executable).with_name("klein-edit"))


def command_env(settings: Settings) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("KLEIN_EDIT_")}
    return {**keep, **settings_env(settings), "KLEIN_EDIT_LOG__FORMAT": "json"}


async def test_submit_wait_uploads_a_local_file_and_prints_the_result(
    make_settings: Callable[..., Settings], tiny_editor: Editor, tmp_path: Path
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    shot = tmp_path / "shot.png"
    shot.write_bytes(png_bytes(96, 64))
    async with running_worker(settings, lambda: tiny_editor):
        proc = await asyncio.create_subprocess_exec(
            KLEIN_EDIT,
            "submit",
            "--image",
            str(shot),
            "--recolor",
            "the shirt=#0A0",
            "--seed",
            "5",
            "--steps",
            "25",
            "--request-id",
            "cli-1",
            "--out",
            str(tmp_path / "edited.png"),
            "--timeout",
            "120",
            env=command_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode()
    result = EditCompleted.model_validate_json(out)
    assert result.request_id == "cli-1"
    assert result.status is EditStatus.SUCCEEDED
    assert result.params is not None
    assert result.params.seed == 5
    assert "#00AA00" in result.params.prompt
    assert result.transformer_passes == 2 * 25  # conditional + unconditional per step, nothing skipped
    assert result.output is not None
    assert (result.output.width, result.output.height) == (96, 64)
    outputs = output_objects(store, settings)
    assert list(outputs) == ["edits/cli-1.png"]
    assert (tmp_path / "edited.png").read_bytes() == outputs["edits/cli-1.png"]
    assert err.decode().endswith(f"saved {result.output.uri} to {tmp_path / 'edited.png'}\n")


async def test_submit_flags_of_issue_22_reach_the_worker_and_every_image_is_saved(
    make_settings: Callable[..., Settings], tiny_editor: Editor, tmp_path: Path
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    shot = tmp_path / "shot.png"
    shot.write_bytes(png_bytes(96, 64))
    flags = "--num-images 2 --aspect-ratio 16:9 --megapixels 0.25 --negative-prompt blurry --format jpeg "
    flags += "--quality 60 --acceleration none --guidance 4 --seed 9 --steps 25 --request-id cli-22"
    async with running_worker(settings, lambda: tiny_editor):
        proc = await asyncio.create_subprocess_exec(
            KLEIN_EDIT,
            "submit",
            "--image",
            str(shot),
            "--prompt",
            "a studio backdrop",
            *flags.split(),
            "--out",
            str(tmp_path / "edited.jpg"),
            "--timeout",
            "150",
            env=command_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=200)
    assert proc.returncode == 0, err.decode()
    result = EditCompleted.model_validate_json(out)
    assert result.status is EditStatus.SUCCEEDED, result.error
    assert result.params is not None
    assert (result.params.negative_prompt, result.params.acceleration) == ("blurry", "none")
    assert [o.seed for o in result.outputs] == [9, 10]
    assert (result.params.width, result.params.height) == size_for_area(16 / 9, 0.25)  # the geometry rule
    objects = output_objects(store, settings)
    assert sorted(objects) == ["edits/cli-22-1.jpg", "edits/cli-22.jpg"]
    assert (tmp_path / "edited.jpg").read_bytes() == objects["edits/cli-22.jpg"]
    assert (tmp_path / "edited-1.jpg").read_bytes() == objects["edits/cli-22-1.jpg"]
    with Image.open(tmp_path / "edited.jpg") as img:
        assert img.format == "JPEG"


async def test_submit_wait_on_a_failed_edit_exits_1_with_one_line_and_the_result_on_stdout(
    make_settings: Callable[..., Settings], tiny_editor: Editor, tmp_path: Path
) -> None:
    settings = make_settings()
    await prepare(settings)
    missing = f"s3://{settings.s3.input_bucket}/no-such-shot.png"
    async with running_worker(settings, lambda: tiny_editor):
        proc = await asyncio.create_subprocess_exec(
            KLEIN_EDIT,
            "submit",
            "--image",
            missing,
            "--prompt",
            "make it blue",
            "--request-id",
            "cli-failed",
            "--wait",
            "--timeout",
            "120",
            env=command_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 1
    result = EditCompleted.model_validate_json(out)
    assert result.status is EditStatus.FAILED
    assert result.error is not None
    lines = [line for line in err.decode().splitlines() if not line.startswith("{")]  # JSON logs aside
    assert lines == [
        f"klein-edit submit: edit cli-failed failed with {result.error.code}: {result.error.message} "
        "(the result event is on stdout)"
    ]
    assert result.error.code == "INPUT_NOT_FOUND"


def input_keys(settings: Settings) -> list[str]:
    listing = ImageStore(settings.s3).client.list_objects_v2(Bucket=settings.s3.input_bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.parametrize(
    ("flags", "exit_code", "message"),
    [
        (
            ["--image", "{missing}", "--prompt", "make it blue"],
            2,
            "--image {missing}: no such file (an object in S3 is given as s3://bucket/key, a URL as https://...)",
        ),
        (
            ["--image", "{shot}", "--recolor", "the shirt=blue"],
            2,
            "--recolor 'the shirt=blue': expected TARGET=#RRGGBB or #RGB, e.g. 'the sneakers=#1E90FF'",
        ),
        (
            ["--image", "{shot}", "--prompt", "make it blue", "--steps", "7"],
            2,
            "--steps: at least 25 (got 7)",
        ),
        (
            ["--image", "{shot}", "--prompt", "make it blue", "--output-uri", "s3://elsewhere/x.png"],
            2,
            "output.uri: s3://elsewhere/x.png is not in the output bucket",
        ),
        (
            ["--image", "{shot}", "--prompt", "make it blue", "--wait"],
            4,
            "cannot reach Kafka at 127.0.0.1:1 (",
        ),
    ],
    ids=["missing-file", "bad-colour", "bad-steps", "foreign-output", "unreachable-broker"],
)
async def test_a_rejected_submit_is_one_line_and_uploads_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path, flags: list[str], exit_code: int, message: str
) -> None:
    settings = make_settings()
    await prepare(settings)
    shot = tmp_path / "shot.png"
    shot.write_bytes(png_bytes(96, 64))
    paths = {"shot": str(shot), "missing": str(tmp_path / "missing.png")}
    env = command_env(settings)
    if exit_code == 4:
        env["KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    proc = await asyncio.to_thread(
        subprocess.run,
        [KLEIN_EDIT, "submit", *(flag.format(**paths) for flag in flags)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == exit_code
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"klein-edit submit: {message.format(**paths)}"), proc.stderr
    assert input_keys(settings) == []  # no orphan upload


def readme_round_trip() -> tuple[dict[str, str], list[str]]:
    """The README's manual round trip: its `export` lines and its `submit` command."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A round trip by hand", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("\n", 1)[1] for block in section.split("```bash")[1:]]
    blocks = [block.split("```", 1)[0].replace("\\\n", " ") for block in blocks]
    assert blocks[0].strip() == "klein-edit dev up"
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in blocks[1].splitlines()
        if line.startswith("export ")
    )
    (submit,) = [shlex.split(line) for line in blocks[2].splitlines() if line.startswith("klein-edit submit")]
    return exports, submit


def test_dev_up_serves_the_readme_round_trip_word_for_word(tmp_path: Path) -> None:
    """Terminal 1 `dev up`; terminal 2 its exports and `worker`; terminal 3 the README's `submit`."""
    readme_exports, submit_command = readme_round_trip()
    (tmp_path / "consumer" / "assets").mkdir(parents=True)
    shutil.copy(REPO / "consumer" / "assets" / "sneaker.png", tmp_path / "consumer" / "assets")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KLEIN_EDIT_")}
    with subprocess.Popen(
        [KLEIN_EDIT, "dev", "up", "--kafka-port", "0", "--s3-port", "0"],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as dev:
        assert dev.stdout is not None
        exports: dict[str, str] = {}
        for line in dev.stdout:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = shlex.split(value)[0]
            if line.startswith("Ctrl-C"):
                break
        # The README shows what `dev up` prints on its default ports (this test takes free ones).
        kafka, s3 = exports["KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS"], exports["KLEIN_EDIT_S3__ENDPOINT_URL"]
        on_default_ports = {
            name: value.replace(kafka, "127.0.0.1:9092").replace(s3, "http://127.0.0.1:9000")
            for name, value in exports.items()
        }
        assert on_default_ports == readme_exports
        env = {**base, **exports, "KLEIN_EDIT_LOG__FORMAT": "json"}
        worker = subprocess.Popen(
            [KLEIN_EDIT, "worker"],
            env={**env, "KLEIN_EDIT_WORKER__HTTP_PORT": "off"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        try:
            assert submit_command[0] == "klein-edit"
            submit = subprocess.run(
                [KLEIN_EDIT, *submit_command[1:]],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                cwd=tmp_path,
            )
        finally:
            worker.terminate()
            worker.wait(timeout=60)
        assert submit.returncode == 0, submit.stderr
        result = EditCompleted.model_validate_json(submit.stdout)
        assert result.status is EditStatus.SUCCEEDED
        assert result.output is not None
        with Image.open(tmp_path / "edited.png") as edited:
            assert edited.size == (result.output.width, result.output.height)
        dev.send_signal(signal.SIGINT)
        rest, _ = dev.communicate(timeout=60)
        assert dev.returncode == 0
        assert "stopping the local Kafka broker and S3 server" in rest
    # Both services are gone with it.
    for port in (int(kafka.rsplit(":", 1)[1]), int(s3.rsplit(":", 1)[1])):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_command_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLEIN_EDIT_")}
    proc = subprocess.run(
        [KLEIN_EDIT, "demo", "--out-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1]
    result = EditCompleted.model_validate_json(body)
    assert result.status is EditStatus.SUCCEEDED
    assert result.output is not None
    assert result.cost.usd == round(result.output.width * result.output.height / 1e6 * 0.002, USD_DECIMALS)
    (original,) = tmp_path.glob("demo-*.input.png")
    (saved,) = set(tmp_path.glob("demo-*.png")) - {original}
    assert original.read_bytes() == resources.files("consumer.assets").joinpath("sneaker.png").read_bytes()
    assert "the output is noise by design" in proc.stdout
    assert "README.md, section 'Running the real model'" in proc.stdout
    assert Image.open(io.BytesIO(saved.read_bytes())).size == (result.output.width, result.output.height)
    assert "stopping the worker and the embedded services" in proc.stdout


async def test_a_librdkafka_client_submits_and_reads_the_result(
    make_settings: Callable[..., Settings], tiny_editor: Editor
) -> None:
    settings = make_settings()
    store = await prepare(settings)
    image = stage_image(store, settings, "rd.png", png_bytes(96, 64))
    request_id = f"rdkafka-{uuid.uuid4().hex[:8]}"
    body = {"request_id": request_id, "image": image, "prompt": "make it green", "num_inference_steps": 25}

    def produce() -> None:
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        producer.produce(settings.kafka.request_topic, key=request_id, value=json.dumps(body))
        assert producer.flush(30) == 0

    def consume_result() -> EditCompleted:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"rd-{request_id}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([settings.kafka.result_topic])
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                if message.key() == request_id.encode():
                    return EditCompleted.model_validate_json(message.value())
        finally:
            consumer.close()
        raise AssertionError("no result read by the librdkafka client")

    async with running_worker(settings, lambda: tiny_editor):
        await asyncio.to_thread(produce)
        result = await asyncio.to_thread(consume_result)

    assert result.status is EditStatus.SUCCEEDED
    assert result.output is not None
    data = output_objects(store, settings)[f"edits/{request_id}.png"]
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (result.output.width, result.output.height) == (96, 64)
    assert result.cost.usd == round(96 * 64 / 1e6 * 0.002, USD_DECIMALS)


def test_dev_up_stops_its_services_on_sighup(tmp_path: Path) -> None:
    """Closing the terminal (SIGHUP) stops Tansu and moto like Ctrl-C does, instead of orphaning them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KLEIN_EDIT_")}
    with subprocess.Popen(
        [KLEIN_EDIT, "dev", "up", "--kafka-port", "0", "--s3-port", "0"],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    ) as dev:
        assert dev.stdout is not None
        exports: dict[str, str] = {}
        for line in dev.stdout:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = shlex.split(value)[0]
            if line.startswith("Ctrl-C"):
                break
        dev.send_signal(signal.SIGHUP)
        rest, _ = dev.communicate(timeout=60)
        assert dev.returncode == 0
        assert "stopping the local Kafka broker and S3 server" in rest
    kafka, s3 = exports["KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS"], exports["KLEIN_EDIT_S3__ENDPOINT_URL"]
    for port in (int(kafka.rsplit(":", 1)[1]), int(s3.rsplit(":", 1)[1])):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0

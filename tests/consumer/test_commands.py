"""The commands users run: `submit --wait`, `demo`, and a request from a librdkafka-based client."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from PIL import Image

from consumer.settings import Settings
from pipeline import Editor
from schemas.results import EditCompleted, EditStatus
from tests.consumer.harness import (
    output_objects,
    png_bytes,
    prepare,
    running_worker,
    settings_env,
    stage_image,
)

pytestmark = pytest.mark.integration

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
            "--wait",
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
    assert result.output is not None
    assert (result.output.width, result.output.height) == (96, 64)
    assert list(output_objects(store, settings)) == ["edits/cli-1.png"]


def test_submit_rejects_a_bad_colour_with_a_clear_message(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    proc = subprocess.run(
        [KLEIN_EDIT, "submit", "--image", "s3://b/k.png", "--recolor", "the shirt=blue"],
        env=command_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--recolor 'the shirt=blue': expected TARGET=#RRGGBB" in proc.stderr


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
    assert result.cost.usd == pytest.approx(result.output.width * result.output.height / 1e6 * 0.002)
    (saved,) = tmp_path.glob("demo-*.png")
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
    assert result.cost.usd == pytest.approx(96 * 64 / 1e6 * 0.002)

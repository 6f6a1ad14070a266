"""A negative prompt on the production record path with the tiny model: it changes the output where
classifier-free guidance runs, is reported in params, and is refused by name over the token limit."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from schemas.errors import ErrorCode
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(60)


def pixels(path: RecordPath, uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.store.read(uri))).convert("RGB"), dtype=np.int16)


async def test_a_negative_prompt_steers_the_guided_edit_and_is_reported(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64, (40, 90, 200)))
    plain = path.request(image, seed=4, output={"metadata": "strip"})
    steered = path.request(
        image, seed=4, output={"metadata": "strip"}, negative_prompt="blurry, red, low quality"
    )
    unguided = path.request(image, seed=4, guidance_scale=1.0, negative_prompt="blurry")
    for req in (plain, steered, unguided):
        assert await path.handle(req)
    by_id = {event.request_id: event for event in path.results()}
    a, b, c = by_id[plain.request_id], by_id[steered.request_id], by_id[unguided.request_id]
    assert a.output is not None
    assert b.output is not None
    assert b.params is not None
    assert b.params.negative_prompt == "blurry, red, low quality"
    assert np.abs(pixels(path, b.output.uri) - pixels(path, a.output.uri)).mean() >= 4.0
    assert c.params is not None
    assert c.params.negative_prompt is None  # no guidance, no unconditional pass: nothing to steer


async def test_an_over_long_negative_prompt_is_refused_by_name(path: RecordPath) -> None:
    image = path.stage("a.png", png(64, 64))
    long = " ".join(f"x{i}q" for i in range(300))
    assert await path.handle(path.request(image, negative_prompt=long))
    event = path.result()
    assert event.error is not None
    assert event.error.code is ErrorCode.INVALID_EVENT
    assert event.error.message.startswith("negative_prompt:")
    assert event.gpu_ms == 0

"""Adapters as trainers write them, through the production record path with the tiny model: accepted
where diffusers accepts them (a diffusers save whose header length starts 0x80, a kohya file named
`.sft`), each changing the output; refused with INVALID_ADAPTER, naming the layout or the keys, where
diffusers would load nothing or drop keys (OneTrainer, kohya text-encoder keys, DoRA). Never a crash,
never retried or dead-lettered."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save

from schemas.errors import ErrorCode
from schemas.results import EditStatus
from storage import S3Location
from tests.adapters import (
    adapter_state_dict,
    diffusers_file,
    dora_scales,
    header_length,
    kohya_layout,
    kohya_text_encoder_keys,
    onetrainer_layout,
    pickle_file,
    wrong_shape_file,
)
from tests.consumer.record_path.path import RecordPath, png

pytestmark = pytest.mark.timeout(120)
ADAPTERS = "adapters-bucket"


def pixels(path: RecordPath, uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.store.read(uri))).convert("RGB"), dtype=np.int16)


async def test_trainer_layouts_are_accepted_where_diffusers_accepts_them_and_refused_by_name(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(s3={"adapter_buckets": [ADAPTERS]})
    image = path.stage("base.png", png(64, 64, (90, 120, 200)))
    state = adapter_state_dict(seed=5)
    kohya = kohya_layout(state)
    first = diffusers_file(seed=5)
    # A diffusers save whose header length is 128 modulo 256: its first byte is 0x80 (pickle's PROTO).
    length = next(n for n in range(header_length(first), header_length(first) + 512, 8) if n % 256 == 0x80)
    files = {
        "diffusers-0x80.safetensors": diffusers_file(seed=5, length=length),
        "kohya.sft": save(kohya),  # type: ignore[arg-type]
        "onetrainer.safetensors": save(onetrainer_layout(state, legacy=False)),  # type: ignore[arg-type]
        "onetrainer-legacy.safetensors": save(onetrainer_layout(state, legacy=True)),  # type: ignore[arg-type]
        "kohya-te.safetensors": save({**kohya, **kohya_text_encoder_keys()}),  # type: ignore[arg-type]
        "kohya-dora.safetensors": save({**kohya, **dora_scales(kohya)}),  # type: ignore[arg-type]
    }
    assert files["diffusers-0x80.safetensors"][0] == 0x80
    for key, data in files.items():
        path.store.put_object(S3Location(ADAPTERS, key), data)

    def edit(**fields: object) -> object:
        return path.request(image, seed=3, output={"metadata": "strip"}, **fields)

    plain = edit()
    requests = {key: edit(loras=[{"uri": f"s3://{ADAPTERS}/{key}"}]) for key in files}
    for req in [plain, *requests.values()]:
        assert await path.handle(req)  # type: ignore[arg-type]
    by_id = {event.request_id: event for event in path.results()}

    base = by_id[plain.request_id]  # type: ignore[attr-defined]
    assert base.output is not None
    for key in ("diffusers-0x80.safetensors", "kohya.sft"):
        result = by_id[requests[key].request_id]  # type: ignore[attr-defined]
        assert result.status is EditStatus.SUCCEEDED, (key, result.error)
        assert result.output is not None
        moved = np.abs(pixels(path, result.output.uri) - pixels(path, base.output.uri)).mean()
        assert moved >= 4.0, f"{key} moved the output by only {moved:.2f} levels"
    refusals = {
        "onetrainer.safetensors": "OneTrainer",
        "onetrainer-legacy.safetensors": "OneTrainer",
        "kohya-te.safetensors": "lora_te",
        "kohya-dora.safetensors": "dora_scale",
    }
    for key, word in refusals.items():
        result = by_id[requests[key].request_id]  # type: ignore[attr-defined]
        assert result.status is EditStatus.FAILED, key
        assert result.error is not None
        assert result.error.code is ErrorCode.INVALID_ADAPTER, (key, result.error)
        assert word in result.error.message, (key, result.error.message)
        assert result.attempt == 1
    assert path.dead_letters() == []


async def test_bad_adapters_fail_with_their_code_cost_nothing_and_skip_the_dlq(
    make_path: Callable[..., RecordPath],
) -> None:
    path = make_path(s3={"adapter_buckets": [ADAPTERS], "max_adapter_bytes": 60_000})
    image = path.stage("base.png", png(96, 80))
    good = diffusers_file(seed=41)
    big = diffusers_file(seed=1, rank=64)  # about 130 kB, over the 60 kB limit of these settings
    assert len(big) > 60_000

    def upload(key: str, data: bytes) -> str:
        path.store.put_object(S3Location(ADAPTERS, key), data)
        return S3Location(ADAPTERS, key).uri

    cases = {
        "forbidden": ("s3://someone-elses-bucket/x.safetensors", ErrorCode.INPUT_FORBIDDEN),
        "pickle": (upload("p.safetensors", pickle_file()), ErrorCode.INVALID_ADAPTER),
        "truncated": (upload("t.safetensors", good[: len(good) - 100]), ErrorCode.INVALID_ADAPTER),
        "wrong-shape": (upload("w.safetensors", wrong_shape_file()), ErrorCode.INVALID_ADAPTER),
        "not-safetensors-name": (upload("a.bin", good), ErrorCode.INVALID_ADAPTER),
        "too-large": (upload("big.safetensors", big), ErrorCode.INVALID_ADAPTER),
        "missing": (S3Location(ADAPTERS, "nope.safetensors").uri, ErrorCode.INPUT_NOT_FOUND),
    }
    requests = {name: path.request(image, loras=[{"uri": uri}]) for name, (uri, _) in cases.items()}
    for req in requests.values():
        assert await path.handle(req)  # answered: the offset may be committed

    got = {event.request_id: event for event in path.results()}
    assert path.dead_letters() == []
    assert path.gpu_runs == 0
    for name, (_uri, code) in cases.items():
        result = got[requests[name].request_id]
        assert result.status is EditStatus.FAILED, name
        assert result.error is not None, name
        assert result.error.code is code, (name, result.error)
        assert not result.error.retryable
        assert result.attempt == 1
        assert result.cost.usd == 0.0
        assert result.gpu_ms == 0.0  # refused in the adapters stage, before any GPU time
    wrong = got[requests["wrong-shape"].request_id].error
    assert wrong is not None
    assert "transformer_blocks.0.attn.to_q" in wrong.message
    pickled = got[requests["pickle"].request_id].error
    assert pickled is not None
    assert "pickle" in pickled.message

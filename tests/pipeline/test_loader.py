"""Model location, validation and loading: every failure is one clear ModelLoadError."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from pipeline.config import PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.errors import ModelLoadError
from pipeline.loader import (
    check_model_directory,
    check_text_encoder,
    load_pipeline,
    resolve_device,
    resolve_dtype,
)

ImageFactory = Callable[..., Image.Image]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def copy_configs_only(source: Path, target: Path) -> Path:
    """The pipeline's JSON/tokenizer files without any weights."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target


def edit_bytes(pipe: Any, image: Image.Image) -> bytes:
    editor = KleinEditor(pipe, PipelineSettings(model="tiny-random", device="cpu"), "x")
    job = EditJob(
        images=[image], prompt="p", num_inference_steps=2, guidance_scale=4.0, seed=3, width=64, height=64
    )
    return editor.edit(job).image.tobytes()


@no_cuda
def test_real_model_without_cuda_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU; none is visible") as info:
        resolve_device(PipelineSettings())
    assert "KLEIN_EDIT_PIPELINE__DEVICE=cpu" in str(info.value)
    assert "tiny-random" in str(info.value)


@no_cuda
def test_forced_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        resolve_device(PipelineSettings(model="tiny-random", device="cuda"))


@no_cuda
def test_tiny_on_auto_runs_on_cpu_in_float32() -> None:
    settings = PipelineSettings(model="tiny-random")
    device = resolve_device(settings)
    assert device.type == "cpu"
    assert resolve_dtype(settings, device) is torch.float32


def test_dtype_auto_is_bfloat16_on_cuda_and_explicit_wins() -> None:
    assert resolve_dtype(PipelineSettings(), torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype(PipelineSettings(dtype="float32"), torch.device("cuda")) is torch.float32


def test_float16_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"FLUX\.2 activations overflow float16"):
        PipelineSettings(dtype="float16")


def test_real_model_may_be_forced_to_cpu() -> None:
    assert resolve_device(PipelineSettings(device="cpu")).type == "cpu"


def test_missing_local_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=f"model directory {missing} does not exist"):
        load_pipeline(PipelineSettings(model=str(missing), device="cpu"))


def test_directory_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no model_index\.json"):
        load_pipeline(PipelineSettings(model=str(tmp_path), device="cpu"))


def test_model_index_without_the_components(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(
        ModelLoadError,
        match=r"model_index\.json names no scheduler \(the scheduler, it was written for FluxPipeline\): "
        r"not a FLUX\.2 \[klein\] pipeline directory",
    ):
        check_model_directory(tmp_path)


def test_directory_with_only_the_index(saved_tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copy(saved_tiny_dir / "model_index.json", tmp_path / "model_index.json")
    with pytest.raises(ModelLoadError, match=r": scheduler/ is missing \(the scheduler\); copy the complete"):
        check_model_directory(tmp_path)


def test_hub_id_not_in_cache(tmp_path: Path) -> None:
    settings = PipelineSettings(
        model="black-forest-labs/FLUX.2-klein-base-9B", device="cpu", cache_dir=str(tmp_path)
    )
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(settings)
    message = str(info.value)
    assert f"not in the cache at {tmp_path}" in message
    assert "gated" in message
    assert "klein-edit fetch-model" in message
    assert "HF_TOKEN" in message
    assert "KLEIN_EDIT_PIPELINE__MODEL" in message
    assert "tiny-random" in message


def test_mismatched_text_encoder_is_caught_before_loading(saved_tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(saved_tiny_dir, tmp_path / "model")
    config_path = model_dir / "text_encoder/config.json"
    config = json.loads(config_path.read_text())
    config["hidden_size"] = 48
    config_path.write_text(json.dumps(config))
    # The weights are still 32 wide: the headers are read, never the weights, and the config is refused.
    with pytest.raises(ModelLoadError, match=r"text_encoder/config\.json says 48"):
        load_pipeline(PipelineSettings(model=str(model_dir), device="cpu"))


def test_mismatch_message_names_known_models() -> None:
    with pytest.raises(ModelLoadError) as info:
        check_text_encoder(2560, 12288, "/models/klein")
    assert (
        "text encoder hidden size 2560 (Qwen3-4B?) does not match transformer joint_attention_dim 12288 "
        "(expects 4096: Qwen3-8B for klein 9B)"
    ) in str(info.value)
    check_text_encoder(4096, 12288, "/models/klein")


def test_a_directory_without_weights_names_the_first_missing_file(
    saved_tiny_dir: Path, tmp_path: Path
) -> None:
    model_dir = copy_configs_only(saved_tiny_dir, tmp_path / "model")
    with pytest.raises(
        ModelLoadError,
        match=f"^{model_dir}: text_encoder/model\\.safetensors is missing \\(the weights of the text encoder",
    ):
        load_pipeline(PipelineSettings(model=str(model_dir), device="cpu"))


def test_other_load_failures_name_the_component(saved_tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(saved_tiny_dir, tmp_path / "model")
    config_path = model_dir / "vae/config.json"
    config = json.loads(config_path.read_text())
    config["norm_num_groups"] = 3  # the VAE's first block has 8 channels: GroupNorm refuses 3 groups
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(PipelineSettings(model=str(model_dir), device="cpu"))
    message = str(info.value)
    assert message.startswith(f"{model_dir}: could not load the VAE (vae/): ValueError: "), message
    assert "\n" not in message


def test_local_directory_loads_the_same_model(
    saved_tiny_dir: Path, tiny_pipe: Any, make_image: ImageFactory
) -> None:
    pipe, name = load_pipeline(PipelineSettings(model=str(saved_tiny_dir), device="cpu"))
    assert name == str(saved_tiny_dir)
    assert pipe.text_encoder.dtype is torch.float32
    image = make_image(64, 64)
    assert edit_bytes(pipe, image) == edit_bytes(tiny_pipe, image)


def test_tiny_random_loads() -> None:
    pipe, name = load_pipeline(PipelineSettings(model="tiny-random", device="cpu"))
    assert name == "tiny-random"
    assert pipe.transformer.config.joint_attention_dim == 3 * pipe.text_encoder.config.hidden_size
    assert not pipe.config.is_distilled

"""Finding, validating and loading the diffusers pipeline named by `PipelineSettings.model`.

Loading never touches the network: a Hub id is resolved in the local cache only (`klein-edit fetch-model`
downloads it). Every failure becomes a `ModelLoadError` whose message says what is missing and what to do,
because it is the one line an operator sees when the worker refuses to start.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.errors import ModelLoadError

# Names for the sizes we know, so a mismatch message can say which model was probably installed.
_TEXT_ENCODERS = {2560: "Qwen3-4B", 4096: "Qwen3-8B"}
_TRANSFORMERS = {7680: "klein 4B", 12288: "klein 9B"}
_COMPONENT_CONFIGS = ("text_encoder/config.json", "transformer/config.json")


def resolve_device(settings: PipelineSettings) -> torch.device:
    """The device to run on; the real model refuses to start without CUDA unless forced to the CPU."""
    has_cuda = torch.cuda.is_available()
    real_model = settings.model != TINY_RANDOM
    if settings.device == "cpu":
        return torch.device("cpu")
    if settings.device == "cuda" or real_model:
        if not has_cuda:
            raise ModelLoadError(
                f"model {settings.model!r} needs a CUDA GPU; none is visible to this process "
                f"(device={settings.device!r}, torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda or 'none'}). Run on a GPU node, set KLEIN_EDIT_PIPELINE__DEVICE=cpu to "
                f"force the CPU (very slow), or use KLEIN_EDIT_PIPELINE__MODEL={TINY_RANDOM} for a CPU demo."
            )
        return torch.device("cuda")
    return torch.device("cuda" if has_cuda else "cpu")


def resolve_dtype(settings: PipelineSettings, device: torch.device) -> torch.dtype:
    if settings.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, settings.dtype)
    return dtype


def load_pipeline(settings: PipelineSettings) -> tuple[Any, str]:
    """Load the pipeline on its device and dtype; returns it with the model name for result events."""
    device = resolve_device(settings)
    dtype = resolve_dtype(settings, device)
    if settings.model == TINY_RANDOM:
        from pipeline.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline()
        return _place(pipe, settings, device, dtype), TINY_RANDOM

    directory = locate_model(settings)
    check_model_directory(directory)
    try:
        pipeline_class = untyped_attr("diffusers", "Flux2KleinPipeline")
        pipe = pipeline_class.from_pretrained(str(directory), dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load the pipeline from {directory}: {type(exc).__name__}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    check_text_encoder(
        int(pipe.text_encoder.config.hidden_size), int(pipe.transformer.config.joint_attention_dim), directory
    )
    return _place(pipe, settings, device, dtype), settings.model


def _place(pipe: Any, settings: PipelineSettings, device: torch.device, dtype: torch.dtype) -> Any:
    """Move components to the device, leaving the text encoder on the CPU when it is offloaded."""
    text_device = torch.device("cpu") if settings.text_encoder_placement == "cpu_offload" else device
    targets = {"transformer": device, "vae": device, "text_encoder": text_device}
    try:
        for name, target in targets.items():
            module = getattr(pipe, name)
            # Cast only when needed: diffusers warns on every dtype cast, even a no-op one.
            if module.dtype != dtype:
                module.to(dtype=dtype)
            module.to(device=target)
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(
            f"the model does not fit in GPU memory ({exc}); try KLEIN_EDIT_PIPELINE__TEXT_ENCODER_PLACEMENT="
            "cpu_offload or KLEIN_EDIT_PIPELINE__QUANTIZE_FLOAT8=true"
        ) from exc
    return pipe


def locate_model(settings: PipelineSettings) -> Path:
    """The directory holding the pipeline: the local directory given, or the cached Hub snapshot."""
    model = settings.model
    candidate = Path(model).expanduser()
    # A Hub id is "owner/name"; anything else shaped like a path is treated as one.
    if candidate.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1 or candidate.exists():
        if not candidate.is_dir():
            raise ModelLoadError(
                f"model directory {candidate} does not exist; point KLEIN_EDIT_PIPELINE__MODEL at a "
                "directory made by save_pretrained (with model_index.json), or at a Hub id fetched with "
                "`klein-edit fetch-model`"
            )
        return candidate
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = settings.cache_dir or constants.HF_HUB_CACHE
    try:
        path = snapshot_download(
            repo_id=model, revision=settings.revision, cache_dir=settings.cache_dir, local_files_only=True
        )
    except LocalEntryNotFoundError as exc:
        revision = f" (revision {settings.revision})" if settings.revision else ""
        raise ModelLoadError(
            f"the weights of {model}{revision} are not in the cache at {cache}. The model is gated: accept "
            f"its licence on the Hub, then run `klein-edit fetch-model` with HF_TOKEN set; or point "
            f"KLEIN_EDIT_PIPELINE__MODEL at a local directory; or use "
            f"KLEIN_EDIT_PIPELINE__MODEL={TINY_RANDOM} for a CPU demo."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"could not resolve {model} in the cache at {cache}: {exc}") from exc
    return Path(path)


def check_model_directory(directory: Path) -> None:
    """Check the layout and the text encoder / transformer coupling before any weight is read."""
    if not (directory / "model_index.json").is_file():
        raise ModelLoadError(
            f"{directory} has no model_index.json: expected a diffusers pipeline directory (as written by "
            "Flux2KleinPipeline.save_pretrained or downloaded by `klein-edit fetch-model`)"
        )
    missing = [name for name in _COMPONENT_CONFIGS if not (directory / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"{directory} is incomplete: missing {', '.join(missing)}; re-run `klein-edit fetch-model` "
            "(it resumes) or copy the whole pipeline directory"
        )
    text_config = _read_json(directory / "text_encoder/config.json")
    transformer_config = _read_json(directory / "transformer/config.json")
    try:
        hidden = int(text_config["hidden_size"])
        joint = int(transformer_config["joint_attention_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{directory}: text_encoder/config.json needs hidden_size and transformer/config.json needs "
            f"joint_attention_dim ({exc!r})"
        ) from exc
    check_text_encoder(hidden, joint, directory)


def check_text_encoder(hidden_size: int, joint_attention_dim: int, where: Path | str) -> None:
    """The transformer reads three stacked text-encoder layers: hidden_size * 3 must be its input width."""
    if hidden_size * 3 == joint_attention_dim:
        return
    expected = joint_attention_dim / 3
    expected_text = str(int(expected)) if expected.is_integer() else f"{expected:.1f}"
    found_name = _TEXT_ENCODERS.get(hidden_size)
    expected_name = _TEXT_ENCODERS.get(int(expected)) if expected.is_integer() else None
    transformer_name = _TRANSFORMERS.get(joint_attention_dim)
    found = f"{hidden_size} ({found_name}?)" if found_name else str(hidden_size)
    wanted = expected_text
    if expected_name:
        wanted += f": {expected_name}" + (f" for {transformer_name}" if transformer_name else "")
    raise ModelLoadError(
        f"{where}: text encoder hidden size {found} does not match transformer joint_attention_dim "
        f"{joint_attention_dim} (expects {wanted}); the text encoder belongs to a different model, "
        "install the text_encoder that ships with this transformer"
    )


def untyped_attr(module: str, name: str) -> Any:
    """`module.name` as Any: diffusers/transformers annotations are partial and fail strict mypy."""
    return getattr(importlib.import_module(module), name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data

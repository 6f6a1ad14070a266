"""Finding, validating and loading the diffusers pipeline named by `PipelineSettings.model`.

Loading never touches the network: a Hub id is resolved in the local cache only (`klein-edit fetch-model`
downloads it). Every failure becomes a `ModelLoadError` whose message says what is missing and what to do,
because it is the one line an operator sees when the worker refuses to start.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
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
    """bfloat16 on CUDA and float32 on the CPU for `auto` (float16 is refused by `PipelineSettings`)."""
    if settings.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, settings.dtype)
    return dtype


def load_pipeline(settings: PipelineSettings) -> tuple[Any, str]:
    """Load the pipeline, frozen, on its device and dtype; returns it with the model name for events.

    One path for every model: a Hub id (from the local cache), a local directory, or `tiny-random`
    (written once as a directory under the cache by `pipeline.tiny.ensure_tiny_model`). Components are
    read onto the CPU, frozen (no parameter requires grad) and then placed one at a time, each quantized
    right after it arrives (`place_components`), so a float8 profile never holds two bf16 copies on the GPU.
    Raises `ModelLoadError` with what to do.
    """
    device = resolve_device(settings)
    dtype = resolve_dtype(settings, device)
    _quiet_progress_bars()
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
    freeze(pipe)
    place_components(pipe, settings, device, dtype)
    return pipe, settings.model


def _quiet_progress_bars() -> None:
    """Loading prints tqdm bars per component and shard: noise in a worker's JSON logs."""
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        untyped_attr(module, "disable_progress_bar")()


def freeze(pipe: Any) -> None:
    """Inference only: eval mode and no parameter requiring grad, in every component.

    `from_pretrained` leaves `requires_grad=True` on every parameter; any call outside `__call__`'s
    `no_grad` (such as `encode_prompt`) would then build and keep an autograd graph.
    """
    for name in COMPONENTS:
        module = getattr(pipe, name)
        module.requires_grad_(False)
        module.eval()


COMPONENTS = ("text_encoder", "transformer", "vae")


def place_components(pipe: Any, settings: PipelineSettings, device: torch.device, dtype: torch.dtype) -> None:
    """Move each component to its device, one at a time, quantizing each as it arrives.

    Order: the text encoder first (it may be float8 or stay on the CPU), then the transformer (moved block
    by block and quantized block by block when float8 is on), then the VAE. Peak GPU memory is therefore
    what is already placed plus one bf16 block, never two bf16 copies of a component
    (`pipeline.sizing.profile_weight_bytes` computes both figures at the 9B dims).
    """
    from pipeline.optimize import quantize_float8

    try:
        for name, on_gpu, float8_skip in placement_plan(settings):
            target = device if on_gpu else torch.device("cpu")
            for prefix, part, recurse in placement_parts(getattr(pipe, name)):
                _move(part, recurse, target, dtype)
                if recurse and float8_skip is not None:
                    quantize_float8(part, skip=float8_skip, prefix=prefix)
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(out_of_memory_message(settings, str(exc).splitlines()[0])) from exc


def placement_plan(settings: PipelineSettings) -> list[tuple[str, bool, tuple[str, ...] | None]]:
    """(component, on the GPU?, float8 skip-list or None for bf16) in the order they are placed."""
    from pipeline.optimize import TEXT_ENCODER_SKIP, TRANSFORMER_SKIP

    placement = settings.text_encoder_placement
    return [
        ("text_encoder", placement != "cpu_offload", TEXT_ENCODER_SKIP if placement == "float8" else None),
        ("transformer", True, TRANSFORMER_SKIP if settings.quantize_float8 else None),
        ("vae", True, None),
    ]


def placement_parts(module: torch.nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.nn.Module, bool]]:
    """(qualified name, module, recurse) pieces a component is moved in, small enough to bound the peak.

    Each block of a block list is one piece; a child holding a block list (`Qwen3ForCausalLM.model`) is
    split further; other children are one piece each; last, the module's own parameters and buffers.
    """
    for name, child in module.named_children():
        qualified = f"{prefix}.{name}" if prefix else name
        if isinstance(child, torch.nn.ModuleList):
            for index, block in enumerate(child):
                yield f"{qualified}.{index}", block, True
        elif any(isinstance(grand, torch.nn.ModuleList) for grand in child.children()):
            yield from placement_parts(child, qualified)
        else:
            yield qualified, child, True
    yield prefix, module, False


def _move(module: torch.nn.Module, recurse: bool, device: torch.device, dtype: torch.dtype) -> None:
    """Move (and cast floating-point tensors of) `module`, or only its own tensors when not `recurse`."""
    tensors = list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse))
    if recurse:
        # Cast only when needed: diffusers warns on every dtype cast, even a no-op one.
        if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
            module.to(dtype=dtype)
        module.to(device=device)
        return
    for tensor in tensors:
        cast = dtype if tensor.is_floating_point() else tensor.dtype
        tensor.data = tensor.data.to(device=device, dtype=cast)


def out_of_memory_message(settings: PipelineSettings, detail: str) -> str:
    """The load-time OOM line: names only the memory options that are not already on."""
    options: list[str] = []
    if not settings.quantize_float8:
        options.append("KLEIN_EDIT_PIPELINE__QUANTIZE_FLOAT8=true (about half the transformer's memory)")
    if settings.text_encoder_placement == "gpu":
        options.append(
            "KLEIN_EDIT_PIPELINE__TEXT_ENCODER_PLACEMENT=float8 (half the text encoder) or cpu_offload "
            "(none on the GPU)"
        )
    elif settings.text_encoder_placement == "float8":
        options.append("KLEIN_EDIT_PIPELINE__TEXT_ENCODER_PLACEMENT=cpu_offload (text encoder off the GPU)")
    if options:
        advice = "; try " + ", or ".join(options)
    else:
        advice = "; every memory option is already on: use a GPU with more memory"
    return f"the model does not fit in GPU memory ({detail}){advice}. docs/operations.md has the sizing table"


def locate_model(settings: PipelineSettings) -> Path:
    """The directory holding the pipeline: the local directory given, or the cached Hub snapshot."""
    model = settings.model
    if model == TINY_RANDOM:
        from huggingface_hub import constants

        from pipeline.tiny import ensure_tiny_model

        return ensure_tiny_model(settings.cache_dir or constants.HF_HUB_CACHE)
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

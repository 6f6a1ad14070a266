"""Finding, checking and loading the diffusers pipeline named by `PipelineSettings.model`.

Loading never touches the network: a Hub id is resolved in the local cache only (`klein-edit fetch-model`
downloads it). Model directories break the way real installs break: an interrupted download (a missing
shard, a partial `.incomplete` blob, a link to a blob that is not there), a file cut short by a full
disk, a component swapped for one of another model, a pickle where safetensors belong. Three steps look
for these, in order:

1. `check_model_directory`, before any weight is read: the layout, the safetensors headers and file
   lengths, and the widths the configs and weights declare (milliseconds, even for the 9B model);
2. `load_components`, one component at a time, safetensors only, so a failure names its component, with
   transformers' and diffusers' own load reports kept off stderr;
3. `check_pipeline`, on the loaded components: the couplings between them (text encoder width, VAE
   latent channels, tokenizer vocabulary).

Every failure is one `ModelLoadError` line saying what is wrong and what to do, because it is the one line
an operator sees when the worker refuses to start.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import torch

from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.errors import ModelLoadError

log = structlog.get_logger(__name__)

# Names for the sizes we know, so a mismatch message can say which model was probably installed.
_TEXT_ENCODERS = {2560: "Qwen3-4B", 4096: "Qwen3-8B"}
_TRANSFORMERS = {7680: "klein 4B", 12288: "klein 9B"}

# The components `Flux2KleinPipeline` takes, in the order they are loaded, and how messages name them.
PIPELINE_COMPONENTS = ("scheduler", "tokenizer", "text_encoder", "transformer", "vae")
_LABELS = {
    "scheduler": "the scheduler",
    "tokenizer": "the tokenizer",
    "text_encoder": "the text encoder",
    "transformer": "the transformer",
    "vae": "the VAE",
}
_CONFIG_FILES = {
    "scheduler": "scheduler_config.json",
    "tokenizer": "tokenizer_config.json",
}  # else config.json
_WEIGHT_STEMS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger JSON headers itself
# Qwen3's tokenizer has 151,669 tokens; without tokenizer.json, Qwen2Tokenizer builds one of 2 (its special
# tokens), which maps every prompt to the same ids. Even a bare byte-level BPE has 256 + specials.
MIN_VOCAB = 256
# (component, tensor, axis, config key): the tensor's size along `axis` must be the config's value. These
# are the widths that couple components, read from the safetensors headers before any weight is.
_WIDTH_PROBES = (
    ("text_encoder", "model.embed_tokens.weight", 1, "hidden_size"),
    ("transformer", "context_embedder.weight", 1, "joint_attention_dim"),
    ("transformer", "x_embedder.weight", 1, "in_channels"),
    ("vae", "decoder.conv_in.weight", 1, "latent_channels"),
)
# `pipeline.tiny.ensure_tiny_model` writes the tiny model to a directory of this name: deleting it is the fix.
_TINY_PREFIX = "klein-edit--tiny-random-"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Where the two libraries name a size mismatch: transformers in its load report (key | MISMATCH | ...ckpt:
# <shape> vs model: <shape>), diffusers in the exception (<key> expected shape <model>, but got <ckpt>).
_REPORT_MISMATCH = re.compile(
    r"(?P<key>\S+)\s*\|\s*MISMATCH\s*\|.*?ckpt:\s*torch\.Size\(\[(?P<ckpt>[\d, ]*)\]\)\s*vs\s*"
    r"model:\s*torch\.Size\(\[(?P<model>[\d, ]*)\]\)"
)
_DIFFUSERS_MISMATCH = re.compile(
    r"(?P<key>\S+) expected shape torch\.Size\(\[(?P<model>[\d, ]*)\]\), but got "
    r"torch\.Size\(\[(?P<ckpt>[\d, ]*)\]\)"
)


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
    (written once as a directory under the cache by `pipeline.tiny.ensure_tiny_model`). The directory is
    checked first (`check_model_directory`), its components are loaded one by one (`load_components`)
    and checked together (`check_pipeline`). Components are read onto the CPU, frozen (no parameter
    requires grad) and then placed one at a time, each quantized right after it arrives
    (`place_components`), so a float8 profile never holds two bf16 copies on the GPU.
    Raises `ModelLoadError` with what to do.
    """
    device = resolve_device(settings)
    dtype = resolve_dtype(settings, device)
    _quiet_progress_bars()
    directory = locate_model(settings)
    index = check_model_directory(directory)
    components = load_components(directory, index, dtype)
    try:
        pipeline_class = untyped_attr("diffusers", "Flux2KleinPipeline")
        # Every component is passed in: this only reads model_index.json (is_distilled) and assembles.
        pipe = pipeline_class.from_pretrained(str(directory), local_files_only=True, **components)
    except Exception as exc:
        raise ModelLoadError(
            f"{directory}: could not assemble the pipeline from its components ({type(exc).__name__}: "
            f"{first_line(exc)}); check model_index.json, or {repair_advice(directory)}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    check_pipeline(pipe, directory)
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


def check_model_directory(directory: Path) -> dict[str, tuple[str, str]]:
    """Check the directory before any weight is read; returns (library, class) per component.

    In order: model_index.json names every component `Flux2KleinPipeline` takes; in each component's
    folder no file is a link to a missing blob, the config is there (and the tokenizer's tokenizer.json),
    and a model's weights are safetensors, with every shard its index names, each file as long as its
    header says; then the widths the weights declare match their configs, and the configs fit together
    (`check_text_encoder`, `check_latent_channels`). Raises `ModelLoadError`.
    """
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        if index_path.is_symlink():
            raise missing_file(directory, index_path, "the pipeline's index")
        raise ModelLoadError(
            f"{directory} has no model_index.json: expected a diffusers pipeline directory (as written by "
            "Flux2KleinPipeline.save_pretrained or downloaded by `klein-edit fetch-model`)"
        )
    index = _pipeline_index(directory, _read_json(index_path))
    configs: dict[str, dict[str, Any]] = {}
    shapes: dict[str, dict[str, list[int]]] = {}
    for name in PIPELINE_COMPONENTS:
        configs[name] = _check_component_files(directory, name)
        if name in COMPONENTS:
            shapes[name] = _check_weights(directory, name, index[name][0])
    _check_widths(directory, configs, shapes)
    try:
        hidden = int(configs["text_encoder"]["hidden_size"])
        joint = int(configs["transformer"]["joint_attention_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{directory}: text_encoder/config.json needs hidden_size and transformer/config.json needs "
            f"joint_attention_dim ({exc!r}); {repair_advice(directory)}"
        ) from exc
    check_text_encoder(hidden, joint, directory)
    in_channels = configs["transformer"].get("in_channels")
    latent_channels = configs["vae"].get("latent_channels")
    if isinstance(in_channels, int) and isinstance(latent_channels, int):
        # Absent keys take the class defaults: `check_pipeline` checks those after loading.
        check_latent_channels(
            in_channels, latent_channels, configs["vae"].get("patch_size", (2, 2)), directory
        )
    return index


def _pipeline_index(directory: Path, data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """model_index.json's (library, class) for each component `Flux2KleinPipeline` takes."""
    index: dict[str, tuple[str, str]] = {}
    for name in PIPELINE_COMPONENTS:
        entry = data.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            kind = data.get("_class_name")
            written_for = f", it was written for {kind}" if kind and kind != "Flux2KleinPipeline" else ""
            raise ModelLoadError(
                f"{directory}: model_index.json names no {name} ({_LABELS[name]}{written_for}): not a "
                "FLUX.2 [klein] pipeline directory; point KLEIN_EDIT_PIPELINE__MODEL at one, or "
                f"{repair_advice(directory)}"
            )
        library, class_name = entry
        if library not in _WEIGHT_STEMS:
            raise ModelLoadError(
                f"{directory}: model_index.json loads {name} from {library}.{class_name}; only diffusers and "
                "transformers classes are loaded: use the model_index.json that ships with the model"
            )
        index[name] = (library, class_name)
    return index


def _check_component_files(directory: Path, name: str) -> dict[str, Any]:
    """The component's folder, its config (returned) and, for the tokenizer, tokenizer.json."""
    folder = directory / name
    if not folder.is_dir():
        raise missing_file(directory, folder, _LABELS[name])
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() and not entry.exists():
            raise missing_file(directory, entry, f"a file of {_LABELS[name]}")
    config_path = folder / _CONFIG_FILES.get(name, "config.json")
    if not config_path.is_file():
        raise missing_file(directory, config_path, f"the config of {_LABELS[name]}")
    if name == "tokenizer" and not (folder / "tokenizer.json").is_file():
        raise missing_file(
            directory,
            folder / "tokenizer.json",
            "without it the tokenizer falls back to a 2-token vocabulary and every prompt would be ignored",
        )
    return _read_json(config_path)


def _check_weights(directory: Path, name: str, library: str) -> dict[str, list[int]]:
    """Check a model component's safetensors files (single or sharded); returns tensor name -> shape."""
    folder = directory / name
    stem = _WEIGHT_STEMS[library]
    single = folder / f"{stem}.safetensors"
    index_path = folder / f"{stem}.safetensors.index.json"
    files = [single] if single.is_file() else []
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(
                f"{directory}: {name}/{index_path.name} has no weight_map; "
                f"{repair_advice(directory, index_path)}"
            )
        shards = sorted({str(shard) for shard in weight_map.values()})
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise missing_file(
                directory,
                folder / missing[0],
                f"{len(missing)} of the {len(shards)} shards named by {name}/{index_path.name}",
            )
        files = [folder / shard for shard in shards]
    elif not files:
        pickles = sorted(entry.name for entry in folder.iterdir() if entry.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{directory}: {name}/{pickles[0]} is a pickle checkpoint and klein-edit loads model weights "
                "as safetensors only (unpickling can run code; LoRA adapters are refused the same way); "
                f"convert it to {name}/{stem}.safetensors, or run `klein-edit fetch-model` for the "
                "safetensors release"
            )
        raise missing_file(directory, single, f"the weights of {_LABELS[name]}")
    shapes: dict[str, list[int]] = {}
    for path in files:
        shapes.update(_safetensors_shapes(directory, path))
    return shapes


def _safetensors_shapes(directory: Path, path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the file's header, once the file is as long as the header says.

    The format: 8 bytes (little-endian length N), N bytes of JSON giving each tensor's dtype, shape and
    byte range, then the data, which safetensors requires to end exactly at the last range.
    """
    relative = path.relative_to(directory)
    size = path.stat().st_size
    cut_short = " (an interrupted download or copy)"
    damage: str | None = None
    header: Any = None
    with path.open("rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        if size == 0:
            damage = f"is empty{cut_short}"
        elif size < 8 or length > _MAX_HEADER_BYTES:
            damage = f"is not a safetensors file ({size} bytes, header length {length})"
        elif 8 + length > size:
            damage = f"is truncated: {size} bytes, shorter than its {length}-byte header{cut_short}"
        else:
            try:
                header = json.loads(stream.read(length))
            except ValueError as exc:
                damage = f"is corrupt: its safetensors header is not JSON ({exc})"
    if damage is None:
        try:
            tensors = {key: value for key, value in header.items() if key != "__metadata__"}
            end = 8 + length + max((int(value["data_offsets"][1]) for value in tensors.values()), default=0)
            shapes = {key: [int(dim) for dim in value["shape"]] for key, value in tensors.items()}
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            damage = f"is corrupt: its safetensors header is malformed ({type(exc).__name__}: {exc})"
        else:
            if size < end:
                damage = f"is truncated: {size:,} bytes of the {end:,} its header declares{cut_short}"
            elif size > end:
                damage = f"is corrupt: {size:,} bytes, but its header declares {end:,}"
            else:
                return shapes
    raise ModelLoadError(f"{directory}: {relative} {damage}; {repair_advice(directory, path)}")


def _check_widths(
    directory: Path, configs: dict[str, dict[str, Any]], shapes: dict[str, dict[str, list[int]]]
) -> None:
    """The widths the weights declare (`_WIDTH_PROBES`) match each component's config."""
    for name, tensor, axis, key in _WIDTH_PROBES:
        shape = shapes.get(name, {}).get(tensor)
        expected = configs.get(name, {}).get(key)
        if shape is None or len(shape) <= axis or not isinstance(expected, int) or shape[axis] == expected:
            continue
        found = shape[axis]
        known = _TEXT_ENCODERS.get(found) if key == "hidden_size" else None
        found_text = f"{found} ({known}?)" if known else str(found)
        raise ModelLoadError(
            f"{directory}: {_LABELS[name]}'s weights have {key} {found_text} ({tensor} is {shape}) but "
            f"{name}/config.json says {expected}: the weights and the config come from different models; "
            f"install the {name}/ folder that ships with this model: {repair_advice(directory, replace=name)}"
        )


def missing_file(directory: Path, path: Path, what: str) -> ModelLoadError:
    """The error for a required file or folder that is not there: a missing one, or a link to a missing blob.

    A partial download (`*.incomplete`, in the model directory or in the Hub cache's blobs) names the cause.
    """
    relative = str(path.relative_to(directory)) + ("/" if path.name in PIPELINE_COMPONENTS else "")
    if path.is_symlink():
        problem = f"{relative} is a link to {os.readlink(path)}, which does not exist ({what})"
    else:
        problem = f"{relative} is missing ({what})"
    partial = partial_downloads(directory)
    if partial:
        cause = f"a download was interrupted (partial file {partial[0].name}"
        cause += f" and {len(partial) - 1} more)" if len(partial) > 1 else ")"
        return ModelLoadError(f"{directory}: {problem}; {cause}: {repair_advice(directory)}")
    return ModelLoadError(f"{directory}: {problem}; {repair_advice(directory)}")


def partial_downloads(directory: Path) -> list[Path]:
    """`*.incomplete` files a download left: in the directory (a `--local-dir` download keeps them under
    .cache/huggingface/) and, for a Hub cache snapshot, in the repository's blobs/."""
    found: list[Path] = []
    roots = [directory]
    if _in_hub_cache(directory):
        roots.append(directory.parent.parent / "blobs")
    for root in roots:
        for parent, _dirs, files in os.walk(root):
            found.extend(Path(parent) / name for name in files if name.endswith(".incomplete"))
    return sorted(found)


def repair_advice(directory: Path, damaged: Path | None = None, *, replace: str | None = None) -> str:
    """What to do about a broken file of `directory` (`damaged`: a file present but bad; `replace`: a
    component folder to replace), for the three kinds of directory: the tiny model, a Hub cache snapshot
    and a local copy."""
    if directory.name.startswith(_TINY_PREFIX):
        return f"delete {directory}: the tiny model is written again at the next start"
    if _in_hub_cache(directory):
        if damaged is not None and damaged.exists():
            # fetch-model keeps a blob that is already there, however damaged: it must go first.
            return f"delete {damaged.resolve()} and run `klein-edit fetch-model` again"
        if replace is not None:
            repository = directory.parent.parent
            return f"the cache was changed by hand: delete {repository} and run `klein-edit fetch-model`"
        return "run `klein-edit fetch-model` again (it resumes)"
    what = f"{replace}/ folder" if replace is not None else "model directory"
    return (
        f"copy the complete {what} again, or set KLEIN_EDIT_PIPELINE__MODEL to the Hub id and run "
        "`klein-edit fetch-model`"
    )


def _in_hub_cache(directory: Path) -> bool:
    """A snapshot of the Hugging Face cache: models--owner--name/snapshots/<commit>."""
    return directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--")


def load_components(directory: Path, index: dict[str, tuple[str, str]], dtype: torch.dtype) -> dict[str, Any]:
    """Each component of the checked `directory`, on the CPU in `dtype`; raises `ModelLoadError` naming it.

    Models load with `use_safetensors=True` (no pickle fallback). What transformers and diffusers log while
    loading is collected, not printed: a failure becomes one line, and a load that succeeds with a report
    (missing keys, say) logs it as one `model.load_report` event.
    """
    components: dict[str, Any] = {}
    for name in PIPELINE_COMPONENTS:
        library, class_name = index[name]
        with library_logs() as reports:
            try:
                components[name] = _load_component(directory / name, library, class_name, dtype)
            except Exception as exc:
                raise ModelLoadError(load_failure_message(directory, name, exc, reports)) from exc
        for report in reports:
            log.warning("model.load_report", component=name, report=report)
    return components


def _load_component(path: Path, library: str, class_name: str, dtype: torch.dtype) -> Any:
    component_class = untyped_attr(library, class_name)
    if issubclass(component_class, untyped_attr("diffusers", "ModelMixin")):
        return component_class.from_pretrained(
            str(path), torch_dtype=dtype, use_safetensors=True, local_files_only=True
        )
    if issubclass(component_class, untyped_attr("transformers", "PreTrainedModel")):
        return component_class.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, local_files_only=True
        )
    return component_class.from_pretrained(str(path), local_files_only=True)  # a scheduler or a tokenizer


def load_failure_message(directory: Path, name: str, exc: BaseException, reports: Sequence[str]) -> str:
    """One line for a component that failed to load, with the mismatch a load report names, if any."""
    text = str(exc)
    if "mismatch" in text.lower():
        found = [_DIFFUSERS_MISMATCH.search(text), *map(_REPORT_MISMATCH.search, reports)]
        match = next((m for m in found if m is not None), None)
        sizes = (
            f": {match['key']} is [{match['ckpt']}] in the weights, [{match['model']}] by the config"
            if match
            else ""
        )
        return (
            f"{directory}: {_LABELS[name]}'s weights do not fit {name}/config.json (tensor sizes "
            f"differ{sizes}): they come from different models; install the {name}/ folder that ships with "
            f"this model: {repair_advice(directory, replace=name)}"
        )
    return (
        f"{directory}: could not load {_LABELS[name]} ({name}/): {type(exc).__name__}: {first_line(exc)}; "
        f"{repair_advice(directory)}"
    )


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_ANSI.sub("", record.getMessage()))


@contextmanager
def library_logs() -> Iterator[list[str]]:
    """Collect what the transformers and diffusers loggers emit, instead of their stderr handlers.

    Their reports are many lines with colour codes (transformers' size-mismatch report is 17 for the tiny
    model), noise in a worker's JSON logs; the caller decides what to say. Both libraries' root loggers
    do not propagate, so replacing their handlers is enough.
    """
    collect = _Collect()
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for name in ("transformers", "diffusers"):
        library = logging.getLogger(name)
        saved.append((library, list(library.handlers), library.propagate))
        library.handlers = [collect]
        library.propagate = False
    try:
        yield collect.messages
    finally:
        for library, handlers, propagate in saved:
            library.handlers = handlers
            library.propagate = propagate


def check_pipeline(pipe: Any, where: Path | str) -> None:
    """Check how the loaded components fit together; raises `ModelLoadError`.

    The text encoder's width against the transformer, the VAE's latent channels against the transformer,
    and the tokenizer (`check_tokenizer`): each would otherwise fail only at the first edit (or, for the
    tokenizer, never fail and ignore every prompt).
    """
    check_text_encoder(
        int(pipe.text_encoder.config.hidden_size), int(pipe.transformer.config.joint_attention_dim), where
    )
    vae = pipe.vae.config
    check_latent_channels(
        int(pipe.transformer.config.in_channels),
        int(vae.latent_channels),
        tuple(getattr(vae, "patch_size", None) or (2, 2)),
        where,
    )
    check_tokenizer(pipe.tokenizer, int(pipe.text_encoder.config.vocab_size), where)


def check_latent_channels(
    in_channels: int, latent_channels: int, patch_size: Sequence[int], where: Path | str
) -> None:
    """The transformer reads the VAE's latents patchified (2x2): in_channels = latent_channels * 4."""
    patch = math.prod(int(side) for side in patch_size)
    if in_channels == latent_channels * patch:
        return
    wanted = f"{in_channels // patch}" if in_channels % patch == 0 else f"{in_channels / patch:.1f}"
    raise ModelLoadError(
        f"{where}: VAE latent_channels {latent_channels} (x{patch} patchified = {latent_channels * patch}) "
        f"does not match transformer in_channels {in_channels} (expects {wanted} latent channels): the VAE "
        "belongs to a different model; install the vae/ folder that ships with this transformer"
    )


def check_tokenizer(tokenizer: Any, embedded_tokens: int, where: Path | str) -> None:
    """A Qwen3 tokenizer: more than `MIN_VOCAB` tokens, none beyond the text encoder's embedding table, and
    the chat template every prompt is rendered with."""
    size = len(tokenizer)
    if size <= MIN_VOCAB:
        raise ModelLoadError(
            f"{where}: the tokenizer has {size} tokens (Qwen3's has 151,669): tokenizer/ is incomplete or "
            "not Qwen3's, and every prompt would be ignored; install the tokenizer/ folder that ships with "
            "this model"
        )
    if size > embedded_tokens:
        raise ModelLoadError(
            f"{where}: the tokenizer has {size} tokens but the text encoder embeds only {embedded_tokens}: "
            "they come from different models; install the tokenizer/ folder that ships with this model"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"{where}: the tokenizer has no chat template (tokenizer/chat_template.jinja, or chat_template "
            "in tokenizer_config.json), which every prompt is rendered with; install the tokenizer/ folder "
            "that ships with this model"
        )


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, without colour codes, at most 300 characters."""
    lines = (line.strip() for line in _ANSI.sub("", str(exc)).splitlines())
    line = next((line for line in lines if line), type(exc).__name__)
    return line if len(line) <= 300 else line[:297] + "..."


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
        raise ModelLoadError(
            f"cannot read {path} ({exc}): the file is damaged; fetch or copy the model directory again"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{path} is not a JSON object: the file is damaged; fetch or copy the model again"
        )
    return data

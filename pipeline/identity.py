"""What a loaded model is, for provenance: `ModelIdentity`, the model's revision and the runtime versions.

The revision names exactly what was loaded without reading the weights: for a Hub id it is the commit hash
of the cached snapshot (the snapshot directory is named by it); for a local directory (and `tiny-random`,
which is one) it is a SHA-256 over the directory's JSON files, i.e. `model_index.json`, every component's
config, the sharded weights' index files, the scheduler and tokenizer files. Cheap (kilobytes to a few
megabytes) and stable across copies of the directory.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline.config import PipelineSettings

# diffusers' name of the backend every attention call uses unless a processor or the registry says
# otherwise: torch's scaled_dot_product_attention. The one place to change when a setting selects another.
DEFAULT_ATTENTION = "native"
VERSIONED_DISTRIBUTIONS = ("klein-edit", "diffusers", "transformers", "torch")
_COMMIT = re.compile(r"[0-9a-f]{40}")

RevisionSource = Literal["hub", "directory", "none"]


@dataclass(frozen=True)
class ModelIdentity:
    """What the editor knows about the model it runs; constant for the life of the process.

    `revision`: the Hub commit (`revision_source` "hub"), the hex SHA-256 of the directory's JSON files
    ("directory", see `directory_revision`) or a placeholder ("none", model-free editors).
    `dtype`: torch dtype name ("bfloat16"); `quantization`: "none" or "float8" (the transformer);
    `attention`: diffusers' backend name; `scheduler`: the scheduler's class name.
    """

    model: str
    revision: str
    revision_source: RevisionSource
    dtype: str
    quantization: Literal["none", "float8"]
    compiled: bool
    attention: str
    scheduler: str


def model_revision(directory: Path) -> tuple[str, RevisionSource]:
    """(revision, source) of a loaded pipeline directory: the snapshot commit of a Hub cache entry
    (`.../snapshots/<40 hex>`), else `directory_revision`."""
    if directory.parent.name == "snapshots" and _COMMIT.fullmatch(directory.name):
        return directory.name, "hub"
    return directory_revision(directory), "directory"


def directory_revision(directory: Path) -> str:
    """Hex SHA-256 over every `*.json` file at the top of `directory` and one level down, in sorted
    order of their relative paths, each contributing `path NUL sha256(bytes) LF`. Weights are not read
    (their index files are; a single-file component is identified by its config)."""
    files = sorted(
        [*directory.glob("*.json"), *directory.glob("*/*.json")],
        key=lambda path: path.relative_to(directory).as_posix(),
    )
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            continue
        relative = path.relative_to(directory).as_posix()
        digest.update(
            relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n"
        )
    return digest.hexdigest()


def attention_backend(pipe: Any) -> str:
    """The attention backend the transformer's processors dispatch to (diffusers' name)."""
    processors = getattr(pipe.transformer, "attn_processors", {})
    chosen = {getattr(p, "_attention_backend", None) for p in processors.values()} - {None}
    if len(chosen) == 1:
        return _backend_name(chosen.pop())
    if chosen:
        return ",".join(sorted(_backend_name(b) for b in chosen))
    try:
        registry = importlib.import_module("diffusers.models.attention_dispatch")._AttentionBackendRegistry
        return _backend_name(registry.get_active_backend()[0])
    except (ImportError, AttributeError):  # pragma: no cover - older or newer diffusers layouts
        return DEFAULT_ATTENTION


def _backend_name(backend: object) -> str:
    return str(getattr(backend, "value", backend))


def describe_pipeline(pipe: Any, settings: PipelineSettings, model: str) -> ModelIdentity:
    """The identity of a pipeline loaded by `load_pipeline` (its directory is `pipe.name_or_path`)."""
    from pipeline.loader import resolve_dtype

    revision, source = model_revision(Path(pipe.name_or_path))
    # The dtype the loader placed the components in (a float8 transformer's parameters report other
    # dtypes: the compute dtype is what is meant).
    dtype = resolve_dtype(settings, torch.device(pipe._execution_device))
    dtype_name = str(dtype).removeprefix("torch.")
    return ModelIdentity(
        model=model,
        revision=revision,
        revision_source=source,
        dtype=dtype_name,
        quantization="float8" if settings.quantize_float8 else "none",
        compiled=settings.compile,
        attention=attention_backend(pipe),
        scheduler=type(pipe.scheduler).__name__,
    )


def runtime_versions() -> dict[str, str]:
    """Installed versions by distribution name (klein-edit, diffusers, transformers, torch) plus `cuda`,
    the CUDA runtime torch was built with (absent on a CPU-only build). Unknown ones are left out."""
    versions: dict[str, str] = {}
    for name in VERSIONED_DISTRIBUTIONS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    cuda = torch.version.cuda
    if cuda:
        versions["cuda"] = str(cuda)
    return versions

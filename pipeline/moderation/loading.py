"""Finding and loading a transformers classifier for moderation, offline, with one-line errors.

The model named by a setting is a local directory (written by `save_pretrained`), a Hub id resolved in
the local Hugging Face cache only (`klein-edit fetch-model --moderation` downloads it), or one of the tiny
random-weight classifiers of `pipeline.moderation.tiny`, written once as a directory under the cache.
Every name ends as a directory, loaded by the same `from_pretrained(..., local_files_only=True,
use_safetensors=True)` call. Every failure is one `ModelLoadError` line saying what is wrong and what
to do, because it is what an operator sees when the worker refuses to start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ModelLoadError
from pipeline.loader import first_line, untyped_attr

# What `fetch-model --moderation` needs of a classifier's repository: configs, safetensors weights, and a
# tokenizer's files (a text classifier); never pickled weights or other frameworks' exports.
FETCH_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


@dataclass(frozen=True, slots=True)
class ClassifierRole:
    """How messages name one of the two classifiers and the settings that choose it."""

    name: str  # "moderation classifier"
    model_setting: str  # the environment variable naming the model
    label_setting: str
    turn_off: str  # how to run without it


IMAGE_ROLE = ClassifierRole(
    name="moderation classifier",
    model_setting="KLEIN_EDIT_MODERATION__MODEL",
    label_setting="KLEIN_EDIT_MODERATION__LABEL",
    turn_off="set KLEIN_EDIT_MODERATION__ENABLED=false",
)
TEXT_ROLE = ClassifierRole(
    name="moderation text classifier",
    model_setting="KLEIN_EDIT_MODERATION__TEXT_MODEL",
    label_setting="KLEIN_EDIT_MODERATION__TEXT_LABEL",
    turn_off="unset KLEIN_EDIT_MODERATION__TEXT_MODEL",
)


@dataclass(frozen=True, slots=True)
class LoadedClassifier:
    """A classifier in eval mode on its device, frozen, with the index of the watched label."""

    model: Any  # a transformers PreTrainedModel
    preprocessor: Any  # its image processor or tokenizer
    label_index: int
    multi_label: bool  # sigmoid per label (multi_label_classification), else softmax over the labels
    model_id: str
    revision: str | None  # the Hub commit of a cached snapshot; None for a local directory


def locate_classifier(
    model: str, *, revision: str | None, cache_dir: str | None, role: ClassifierRole
) -> tuple[Path, str | None]:
    """The directory holding `model` and its Hub commit (None unless it is a cached snapshot)."""
    from huggingface_hub import constants

    from pipeline.moderation.tiny import ensure_tiny_classifier_named

    cache = cache_dir or constants.HF_HUB_CACHE
    tiny = ensure_tiny_classifier_named(model, cache)
    if tiny is not None:
        return tiny, None
    candidate = Path(model).expanduser()
    # A Hub id is "owner/name"; anything else shaped like a path is treated as one.
    if candidate.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1 or candidate.exists():
        if not candidate.is_dir():
            raise ModelLoadError(
                f"{role.name} directory {candidate} does not exist: point {role.model_setting} at a "
                "directory written by save_pretrained, or at a Hub id installed with `klein-edit "
                f"fetch-model --moderation` (or {role.turn_off})"
            )
        return candidate, None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(
            snapshot_download(repo_id=model, revision=revision, cache_dir=cache_dir, local_files_only=True)
        )
    except LocalEntryNotFoundError as exc:
        at = f"@{revision}" if revision else ""
        raise ModelLoadError(
            f"{role.name} {model}{at} is not installed (not in the cache at {cache}): run `klein-edit "
            f"fetch-model --moderation` (or {role.turn_off})"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"{role.name} {model}: could not resolve it in the cache at {cache} ({type(exc).__name__}: "
            f"{first_line(exc)}); run `klein-edit fetch-model --moderation` again (or {role.turn_off})"
        ) from exc
    return path, path.name


def load_classifier(
    model: str,
    *,
    revision: str | None,
    label: str,
    kind: str,
    cache_dir: str | None,
    device: torch.device,
    role: ClassifierRole,
) -> LoadedClassifier:
    """Load an `AutoModelFor<kind>` and its preprocessor (`AutoImageProcessor` for ImageClassification,
    `AutoTokenizer` for SequenceClassification) in float32 on `device`; raises `ModelLoadError`."""
    directory, commit = locate_classifier(model, revision=revision, cache_dir=cache_dir, role=role)
    where = f"{role.name} {model}" + (f" ({directory})" if str(directory) != model else "")
    untyped_attr("transformers.utils.logging", "disable_progress_bar")()
    model_class = untyped_attr("transformers", f"AutoModelFor{kind}")
    preprocessor_class = untyped_attr(
        "transformers", "AutoImageProcessor" if kind == "ImageClassification" else "AutoTokenizer"
    )
    with quiet_transformers():
        try:
            network, info = model_class.from_pretrained(
                str(directory),
                local_files_only=True,
                use_safetensors=True,
                dtype=torch.float32,
                output_loading_info=True,
            )
            preprocessor = preprocessor_class.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"{where}: cannot be loaded as a transformers {kind} model with safetensors weights "
                f"({type(exc).__name__}: {first_line(exc)}); install it again with `klein-edit fetch-model "
                f"--moderation` or point {role.model_setting} at another model (or {role.turn_off})"
            ) from exc
    # transformers initialises absent or misshapen tensors at random and only warns: a base model without
    # its classification head would load and score noise.
    absent = sorted(info.get("missing_keys") or []) + sorted(
        str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys") or []
    )
    if absent:
        raise ModelLoadError(
            f"{where}: its weights lack or misshape {len(absent)} tensor(s) of the {kind} model ({absent[0]}"
            f"{', ...' if len(absent) > 1 else ''}), which would be random: it is not a fine-tuned "
            f"classifier; point {role.model_setting} at one (or {role.turn_off})"
        )
    network.eval().requires_grad_(False)
    id2label = {int(index): str(name) for index, name in network.config.id2label.items()}
    matches = [index for index, name in sorted(id2label.items()) if name == label]
    if not matches:
        labels = ", ".join(repr(name) for _index, name in sorted(id2label.items()))
        raise ModelLoadError(
            f"{where} has no label {label!r}; its labels are {labels}: set {role.label_setting} to one "
            "of them"
        )
    try:
        network.to(device)
    except Exception as exc:  # e.g. CUDA out of memory or no such device
        raise ModelLoadError(
            f"{where}: cannot be placed on {device} ({type(exc).__name__}: {first_line(exc)}); set "
            "KLEIN_EDIT_MODERATION__DEVICE=cpu to run it on the CPU"
        ) from exc
    return LoadedClassifier(
        model=network,
        preprocessor=preprocessor,
        label_index=matches[0],
        multi_label=network.config.problem_type == "multi_label_classification",
        model_id=model,
        revision=commit,
    )


def label_probabilities(logits: torch.Tensor, classifier: LoadedClassifier) -> list[float]:
    """The watched label's probability for each row of `logits` (batch, labels), in [0, 1]."""
    values = logits.float()
    probabilities = values.sigmoid() if classifier.multi_label else values.softmax(dim=-1)
    result: list[float] = probabilities[:, classifier.label_index].tolist()
    return result


class _Discard(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' load chatter (processor fallbacks, load reports) off stderr while loading;
    a failure is reported as one line by the caller instead."""
    library = logging.getLogger("transformers")
    saved = (list(library.handlers), library.propagate)
    library.handlers = [_Discard()]
    library.propagate = False
    try:
        yield
    finally:
        library.handlers, library.propagate = saved

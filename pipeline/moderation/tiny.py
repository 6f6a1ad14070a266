"""Tiny random-weight classifiers of the real classes, written once as model directories, for tests.

`tiny-random-nsfw` is a `ViTForImageClassification` (labels `normal`, `nsfw`, as the default
Falconsai/nsfw_image_detection) with a `ViTImageProcessor`; `tiny-random-unsafe-text` is a
`BertForSequenceClassification` (labels `safe`, `unsafe`) with a WordPiece tokenizer trained here. Each is
written with `save_pretrained` under the Hugging Face cache and loaded through the same
`pipeline.moderation.loading` path as a Hub id or a local directory, so tests exercise the production code.

A test decides the verdict through the weights, never through a code path the real classifier does not
take: `label_bias` is added to the bias of the watched label's logit in the classification head. At 0 the
random head gives every input a watched-label probability near 0.45 (below the 0.85 default threshold);
`FLAGGING_BIAS` (+8) lifts it above 0.999 and -8 sinks it below 0.001, whatever the input.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.loader import untyped_attr
from pipeline.moderation.loading import quiet_transformers
from pipeline.moderation.settings import TINY_IMAGE_CLASSIFIER, TINY_TEXT_CLASSIFIER

IMAGE_LABELS = {0: "normal", 1: "nsfw"}
TEXT_LABELS = {0: "safe", 1: "unsafe"}
FLAGGING_BIAS = 8.0
TINY_IMAGE_SIZE = 32
# Bump when the construction changes in a way the configs do not show, so a stale directory is never reused.
_FORMAT = 1
_TEXT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_TEXT_TRAINING = [
    "make the sky purple and add a moon",
    "replace the background with a sunny beach",
    "recolor the sneakers to the exact color",
    "keep its material texture shading and everything else unchanged",
]


def tiny_image_classifier_config() -> dict[str, Any]:
    return {
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": 16,
        "num_channels": 3,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "id2label": IMAGE_LABELS,
        "label2id": {name: index for index, name in IMAGE_LABELS.items()},
    }


def tiny_image_processor_config() -> dict[str, Any]:
    """Falconsai's preprocessing (resize, rescale, normalise with mean = std = 0.5) at 32 px."""
    return {
        "size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def tiny_text_classifier_config(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "id2label": TEXT_LABELS,
        "label2id": {name: index for index, name in TEXT_LABELS.items()},
    }


def build_tiny_image_classifier(*, label_bias: float = 0.0, seed: int = 0) -> tuple[Any, Any]:
    """(ViTForImageClassification, ViTImageProcessor); the same seed and bias give the same weights."""
    transformers: Any = importlib.import_module("transformers")
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state stays untouched
        torch.manual_seed(seed)
        model = transformers.ViTForImageClassification(
            transformers.ViTConfig(**tiny_image_classifier_config())
        ).eval()
    _add_label_bias(model.classifier, IMAGE_LABELS, "nsfw", label_bias)
    with quiet_transformers():  # without torchvision, v5 says it falls back to the PIL backend
        processor = transformers.ViTImageProcessor(**tiny_image_processor_config())
    return model, processor


def build_text_tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer trained here (no files, no network), as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece

    transformers: Any = importlib.import_module("transformers")
    wordpiece = Tokenizer(WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=256, special_tokens=_TEXT_SPECIAL_TOKENS, show_progress=False
    )
    wordpiece.train_from_iterator(_TEXT_TRAINING * 4, trainer=trainer)
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def build_tiny_text_classifier(*, label_bias: float = 0.0, seed: int = 0) -> tuple[Any, Any]:
    """(BertForSequenceClassification, its tokenizer); the same seed and bias give the same weights."""
    transformers: Any = importlib.import_module("transformers")
    tokenizer = build_text_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification(
            transformers.BertConfig(**tiny_text_classifier_config(len(tokenizer)))
        ).eval()
    _add_label_bias(model.classifier, TEXT_LABELS, "unsafe", label_bias)
    return model, tokenizer


@torch.no_grad()
def _add_label_bias(head: torch.nn.Linear, labels: dict[int, str], label: str, bias: float) -> None:
    index = next(index for index, name in labels.items() if name == label)
    if head.bias is not None:
        head.bias[index] += bias


def tiny_classifier_key(kind: str, *, label_bias: float, seed: int) -> str:
    """A short hash of all that determines a tiny classifier's files (configs, bias, seed, versions)."""
    transformers: Any = importlib.import_module("transformers")
    tokenizers: Any = importlib.import_module("tokenizers")
    spec = {
        "format": _FORMAT,
        "kind": kind,
        "label_bias": float(label_bias),
        "seed": seed,
        "image": tiny_image_classifier_config(),
        "processor": tiny_image_processor_config(),
        "text": tiny_text_classifier_config(0),
        "text_training": _TEXT_TRAINING,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_tiny_image_classifier(cache_root: str | Path, *, label_bias: float = 0.0, seed: int = 0) -> Path:
    """The tiny image classifier's directory under `cache_root`, written on first use (see `_ensure`)."""
    return _ensure(cache_root, TINY_IMAGE_CLASSIFIER, "image", label_bias, seed, build_tiny_image_classifier)


def ensure_tiny_text_classifier(cache_root: str | Path, *, label_bias: float = 0.0, seed: int = 0) -> Path:
    """The tiny text classifier's directory under `cache_root`, written on first use (see `_ensure`)."""
    return _ensure(cache_root, TINY_TEXT_CLASSIFIER, "text", label_bias, seed, build_tiny_text_classifier)


def ensure_tiny_classifier_named(name: str, cache_root: str | Path) -> Path | None:
    """The directory a tiny classifier's name resolves to (bias 0, seed 0), or None for any other name."""
    if name == TINY_IMAGE_CLASSIFIER:
        return ensure_tiny_image_classifier(cache_root)
    if name == TINY_TEXT_CLASSIFIER:
        return ensure_tiny_text_classifier(cache_root)
    return None


def _ensure(
    cache_root: str | Path,
    name: str,
    kind: str,
    label_bias: float,
    seed: int,
    build: Callable[..., tuple[Any, Any]],
) -> Path:
    """Several processes (test workers, a demo) may ask at once: each writes into a private temporary
    directory and renames it into place atomically, so a reader never sees a half-written model."""
    root = Path(cache_root).expanduser()
    final = root / f"klein-edit--{name}-{tiny_classifier_key(kind, label_bias=label_bias, seed=seed)}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        model, preprocessor = build(label_bias=label_bias, seed=seed)
        untyped_attr("transformers.utils.logging", "disable_progress_bar")()
        with quiet_transformers():
            model.save_pretrained(str(scratch / "model"), safe_serialization=True)
            preprocessor.save_pretrained(str(scratch / "model"))
        try:
            os.replace(scratch / "model", final)
        except OSError:
            # Another process won the race; its directory is identical (same key).
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final

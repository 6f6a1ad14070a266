"""LoRA adapters: read and check a safetensors file against the transformer, and apply a request's
adapters to the pipeline.

`parse_adapter` is CPU-only and thread-safe (the worker runs it on an I/O thread in the prepare
stage); it never unpickles anything and checks every module, shape and rank before any GPU work.
`AdapterApplier` runs on the GPU thread only: it keeps a few adapters loaded in the transformer
(diffusers' peft integration, least recently used evicted), activates the request's set with its scales,
and disables every LoRA layer for a request without adapters, so that request computes exactly what a
model that never saw an adapter computes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import InvalidAdapter

TRANSFORMER_PREFIX = "transformer."
# What diffusers' safetensors header metadata key for LoRA settings (alpha, rank pattern) is called.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
_WEIGHT_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias")
# Key prefixes of the layouts diffusers knows (its own, peft's PeftModel, ai-toolkit, text encoders).
_KNOWN_PREFIXES = (TRANSFORMER_PREFIX, "text_encoder", "base_model.model.", "diffusion_model.", "unet.")
_HEADER_LENGTH_BYTES = 8
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL_OPCODE = 0x80  # PROTO opcode that starts every pickle of protocol 2 and later


@dataclass(frozen=True, eq=False)
class AdapterWeights:
    """A checked adapter in host memory: diffusers' LoRA layout with `transformer.`-prefixed keys."""

    sha256: str  # hex SHA-256 of the file
    nbytes: int  # size of the file
    state_dict: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any] | None  # diffusers' lora_adapter_metadata (alpha, ranks), if the file had it
    rank: int  # the largest rank of any module
    modules: tuple[str, ...]  # transformer modules it adapts

    @property
    def name(self) -> str:
        """The adapter name inside the transformer: a function of the content, so equal files share it."""
        return f"lora_{self.sha256[:16]}"

    @property
    def tensor_bytes(self) -> int:
        """Host memory its tensors take (what the LRU counts)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict.values())


@dataclass(frozen=True)
class ActiveAdapter:
    """An adapter applied to one edit, with its scale (-2..2; 0 contributes nothing)."""

    weights: AdapterWeights
    scale: float


def linear_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """`{qualified name: (in_features, out_features)}` of every Linear layer an adapter may target."""
    return {
        name: (module.in_features, module.out_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def parse_adapter(
    data: bytes,
    *,
    name: str,
    targets: Mapping[str, tuple[int, int]] | None,
    max_rank: int,
) -> AdapterWeights:
    """Parse and check one adapter file; raises `InvalidAdapter` naming `name` and what does not fit.

    `data` must be safetensors (the format is checked from its bytes, not trusted from the name); pickle
    and `torch.save` archives are refused without being opened. Kohya, peft and diffusers layouts are
    accepted (diffusers' `Flux2LoraLoaderMixin.lora_state_dict` converts them). `targets` is
    `linear_shapes(transformer)`: every adapted module must be one of them, with `lora_A` of shape
    (rank, in_features) and `lora_B` (out_features, rank), rank <= `max_rank`. None skips the
    module check (a model-free editor).
    """
    _check_format(data, name)
    try:
        from safetensors.torch import load as load_safetensors

        raw = load_safetensors(data)
        header = _header_metadata(data)
    except Exception as exc:
        raise InvalidAdapter(f"{name}: not a readable safetensors file ({_first_line(exc)})") from exc
    metadata = _adapter_metadata(header, name)
    state_dict = _to_diffusers_layout(raw, name)
    modules = _check_modules(state_dict, name, targets, max_rank)
    ranks = [int(t.shape[0]) for k, t in state_dict.items() if k.endswith(".lora_A.weight")]
    return AdapterWeights(
        sha256=hashlib.sha256(data).hexdigest(),
        nbytes=len(data),
        state_dict=state_dict,
        metadata=metadata,
        rank=max(ranks),
        modules=modules,
    )


def _check_format(data: bytes, name: str) -> None:
    if data[:4] == _ZIP_MAGIC:
        raise InvalidAdapter(
            f"{name}: a zip archive (a torch.save checkpoint); only safetensors adapters are loaded, "
            "pickle-based formats never are"
        )
    if data[:1] and data[0] == _PICKLE_PROTOCOL_OPCODE:
        raise InvalidAdapter(
            f"{name}: a pickle file; only safetensors adapters are loaded, pickles never are"
        )
    if len(data) < _HEADER_LENGTH_BYTES + 2:
        raise InvalidAdapter(f"{name}: {len(data)} bytes, too short for a safetensors file")
    header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    if data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + 1] != b"{":
        raise InvalidAdapter(f"{name}: not a safetensors file (no JSON header after the 8-byte length)")
    if header_length > len(data) - _HEADER_LENGTH_BYTES:
        raise InvalidAdapter(
            f"{name}: truncated: its safetensors header declares {header_length} bytes, the file has "
            f"{len(data) - _HEADER_LENGTH_BYTES} after the length"
        )
    try:
        header = json.loads(data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length])
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InvalidAdapter(f"{name}: its safetensors header is malformed ({_first_line(exc)})") from exc
    payload = len(data) - _HEADER_LENGTH_BYTES - header_length
    if ends and max(ends) > payload:
        raise InvalidAdapter(
            f"{name}: truncated: its tensors need {max(ends)} bytes of data, the file has {payload}"
        )


def _header_metadata(data: bytes) -> dict[str, str]:
    header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    header = json.loads(data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length])
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def _adapter_metadata(header: Mapping[str, str], name: str) -> dict[str, Any] | None:
    raw = header.get(ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidAdapter(f"{name}: its {ADAPTER_METADATA_KEY} header is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidAdapter(f"{name}: its {ADAPTER_METADATA_KEY} header is not a JSON object")
    return value


def _to_diffusers_layout(raw: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    from diffusers import Flux2KleinPipeline

    if not raw:
        raise InvalidAdapter(f"{name}: the file holds no tensors")
    if all(key.endswith(_WEIGHT_SUFFIXES) and not key.startswith(_KNOWN_PREFIXES) for key in raw):
        # Bare diffusers module paths (peft's `get_peft_model_state_dict` of the transformer itself):
        # diffusers would silently load nothing from these, so they are read as the transformer's.
        raw = {TRANSFORMER_PREFIX + key: tensor for key, tensor in raw.items()}
    try:
        converted = Flux2KleinPipeline.lora_state_dict(dict(raw))
    except Exception as exc:
        raise InvalidAdapter(
            f"{name}: not a FLUX.2 LoRA layout diffusers can read ({_first_line(exc)})"
        ) from exc
    state_dict: dict[str, torch.Tensor] = dict(converted)
    if any(".lokr_" in key for key in state_dict):
        raise InvalidAdapter(f"{name}: a LoKr adapter; only LoRA adapters are supported")
    for key in state_dict:
        if not key.startswith(TRANSFORMER_PREFIX):
            raise InvalidAdapter(
                f"{name}: key {key!r} does not adapt the transformer (only the transformer takes adapters)"
            )
        if not key.endswith(_WEIGHT_SUFFIXES):
            raise InvalidAdapter(f"{name}: key {key!r} is not a LoRA weight (lora_A / lora_B)")
    return state_dict


def _check_modules(
    state_dict: Mapping[str, torch.Tensor],
    name: str,
    targets: Mapping[str, tuple[int, int]] | None,
    max_rank: int,
) -> tuple[str, ...]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            raise InvalidAdapter(f"{name}: {key} is {tensor.dtype}, not a floating-point tensor")
        body = key.removeprefix(TRANSFORMER_PREFIX)
        for suffix in _WEIGHT_SUFFIXES:
            if body.endswith(suffix):
                pairs.setdefault(body.removesuffix(suffix), {})[suffix] = tensor
    for module, parts in pairs.items():
        down, up = parts.get(".lora_A.weight"), parts.get(".lora_B.weight")
        if down is None or up is None:
            raise InvalidAdapter(f"{name}: module {module} has only one of lora_A / lora_B")
        if down.ndim != 2 or up.ndim != 2:
            raise InvalidAdapter(f"{name}: module {module}: lora_A and lora_B must be matrices")
        rank = int(down.shape[0])
        if int(up.shape[1]) != rank:
            raise InvalidAdapter(
                f"{name}: module {module}: lora_A has rank {rank}, lora_B has rank {int(up.shape[1])}"
            )
        if rank > max_rank:
            raise InvalidAdapter(
                f"{name}: module {module} has rank {rank}, over this worker's limit of {max_rank} "
                "(KLEIN_EDIT_PIPELINE__MAX_ADAPTER_RANK)"
            )
        if targets is None:
            continue
        if module not in targets:
            raise InvalidAdapter(f"{name}: module {module} is not a linear layer of this model's transformer")
        in_features, out_features = targets[module]
        got = (int(down.shape[1]), int(up.shape[0]))
        if got != (in_features, out_features):
            raise InvalidAdapter(
                f"{name}: module {module} is {got[0]} -> {got[1]} in the adapter but {in_features} -> "
                f"{out_features} in this model (an adapter trained for another model?)"
            )
        bias = parts.get(".lora_B.bias")
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise InvalidAdapter(f"{name}: module {module}: lora_B.bias has shape {tuple(bias.shape)}")
    return tuple(sorted(pairs))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no detail'}"[:300]


class AdapterApplier:
    """Puts a request's adapters on the pipeline's transformer; GPU thread only.

    Up to `resident` adapters stay loaded (named by content, least recently used deleted first), so a
    queue that keeps using the same few adapters loads each once. Every edit sets the whole LoRA state:
    its adapters active with their scales, or, without adapters, every LoRA layer disabled (peft then
    calls only the original layer, so the result is bit-identical to a model without LoRA layers).
    Adapters with scale 0 are not activated at all.
    """

    def __init__(self, pipe: Any, *, resident: int) -> None:
        if resident < 1:
            raise ValueError("resident must be at least 1")
        self._pipe = pipe
        self._capacity = resident
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._enabled = True  # whether LoRA layers (if any) are enabled

    @property
    def loaded(self) -> list[str]:
        """Names of the adapters loaded in the transformer, least recently used first."""
        return list(self._loaded)

    def apply(self, adapters: Sequence[ActiveAdapter]) -> float:
        """Make exactly `adapters` active; returns the milliseconds spent loading adapters (0 if resident).

        Raises `InvalidAdapter` when diffusers refuses an adapter (its LoRA layers are removed again).
        Out-of-memory errors are left to the caller.
        """
        wanted: dict[str, tuple[AdapterWeights, float]] = {}
        for adapter in adapters:
            previous = wanted.get(adapter.weights.name)
            # One file listed twice acts once with the summed scale (LoRA is linear in its scale).
            scale = adapter.scale + (previous[1] if previous else 0.0)
            wanted[adapter.weights.name] = (adapter.weights, scale)
        wanted = {key: value for key, value in wanted.items() if value[1] != 0.0}
        if not wanted:
            if self._loaded and self._enabled:
                self._pipe.disable_lora()
                self._enabled = False
            return 0.0
        started = time.perf_counter()
        loaded_any = False
        for key, (weights, _scale) in wanted.items():
            if key in self._loaded:
                self._loaded.move_to_end(key)
                continue
            self._make_room(keep=wanted.keys())
            self._load(weights)
            self._loaded[key] = None
            loaded_any = True
        load_ms = (time.perf_counter() - started) * 1000.0 if loaded_any else 0.0
        if not self._enabled:
            self._pipe.enable_lora()
            self._enabled = True
        self._pipe.set_adapters(list(wanted), adapter_weights=[scale for _w, scale in wanted.values()])
        return load_ms

    def _make_room(self, keep: Any) -> None:
        while len(self._loaded) >= self._capacity:
            victim = next((name for name in self._loaded if name not in keep), None)
            if victim is None:
                return  # every resident adapter is wanted by this edit: go one over for now
            self._pipe.delete_adapters([victim])
            del self._loaded[victim]

    def _load(self, weights: AdapterWeights) -> None:
        pipe = self._pipe
        try:
            pipe.load_lora_into_transformer(
                dict(weights.state_dict),
                transformer=pipe.transformer,
                adapter_name=weights.name,
                metadata=dict(weights.metadata) if weights.metadata is not None else None,
                _pipeline=pipe,
                # Allocate the LoRA layers where the base layers live, then copy: no meta tensors left over.
                low_cpu_mem_usage=False,
            )
        except (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                raise
            raise InvalidAdapter(
                f"adapter {weights.sha256[:12]}: diffusers could not load it ({_first_line(exc)})"
            ) from exc


BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")


def slot_modules(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """The layers compiled adapter slots cover: every Linear layer of the transformer blocks."""
    return {
        name: shape for name, shape in linear_shapes(transformer).items() if name.startswith(BLOCK_PREFIXES)
    }


class AdapterSlots:
    """Adapters for a compiled transformer: fixed slots, written in place, so nothing ever recompiles.

    Installed before `torch.compile`: `slots` LoRA adapters of rank `rank` on every layer of `modules`,
    all active at scale 1 and all zero (a zero `lora_B` adds exactly 0). An edit copies its adapters'
    weights into the slots (rank zero-padded to `rank`, the request's scale and the adapter's alpha / rank
    folded into `lora_B`) and zeroes the slots it does not use. Module structure, active set and scalings
    never change, so the compiled graphs stay valid; this is what peft's hot-swap does, for several
    adapters at once and per-request scales. Every edit pays for the slots' matmuls, used or not.
    GPU thread only.
    """

    def __init__(self, pipe: Any, *, slots: int, rank: int, modules: Mapping[str, tuple[int, int]]) -> None:
        if slots < 1 or not modules:
            raise ValueError("adapter slots need at least one slot and one module")
        self._rank = rank
        self._names = [f"klein_slot_{index}" for index in range(slots)]
        self._modules = dict(modules)
        zero: dict[str, torch.Tensor] = {}
        for module, (in_features, out_features) in self._modules.items():
            zero[f"{TRANSFORMER_PREFIX}{module}.lora_A.weight"] = torch.zeros(rank, in_features)
            zero[f"{TRANSFORMER_PREFIX}{module}.lora_B.weight"] = torch.zeros(out_features, rank)
        for name in self._names:
            pipe.load_lora_into_transformer(
                dict(zero),
                transformer=pipe.transformer,
                adapter_name=name,
                _pipeline=pipe,
                low_cpu_mem_usage=False,
            )
        pipe.set_adapters(self._names, adapter_weights=[1.0] * slots)
        self._layers = {module: pipe.transformer.get_submodule(module) for module in self._modules}
        self._held: list[tuple[str, float] | None] = [None] * slots

    @property
    def modules(self) -> dict[str, tuple[int, int]]:
        return dict(self._modules)

    @property
    def loaded(self) -> list[str]:
        """Names of the adapters in the slots now (content names, as `AdapterApplier.loaded`)."""
        return [f"lora_{held[0][:16]}" for held in self._held if held is not None]

    def apply(self, adapters: Sequence[ActiveAdapter]) -> float:
        """Write exactly `adapters` into the slots; returns the milliseconds spent copying weights."""
        merged: dict[str, tuple[AdapterWeights, float]] = {}
        for adapter in adapters:
            previous = merged.get(adapter.weights.sha256)
            merged[adapter.weights.sha256] = (
                adapter.weights,
                adapter.scale + (previous[1] if previous else 0.0),
            )
        wanted = [(weights, scale) for weights, scale in merged.values() if scale != 0.0]
        if len(wanted) > len(self._names):
            raise InvalidAdapter(f"{len(wanted)} adapters, this worker has {len(self._names)} adapter slots")
        # An adapter already held at this scale stays in its slot; the others take the free slots.
        plan: list[tuple[AdapterWeights, float] | None] = [None] * len(self._names)
        pending = []
        for weights, scale in wanted:
            key = (weights.sha256, scale)
            if key in self._held:
                plan[self._held.index(key)] = (weights, scale)
            else:
                pending.append((weights, scale))
        free = [index for index, entry in enumerate(plan) if entry is None]
        for index, waiting in zip(free, pending, strict=False):
            plan[index] = waiting
        started = time.perf_counter()
        copied = False
        with torch.no_grad():
            for index, planned in enumerate(plan):
                held = (planned[0].sha256, planned[1]) if planned is not None else None
                if held == self._held[index]:
                    continue
                self._fill(self._names[index], planned)
                self._held[index] = held
                copied = copied or planned is not None
        return (time.perf_counter() - started) * 1000.0 if copied else 0.0

    def _fill(self, slot: str, entry: tuple[AdapterWeights, float] | None) -> None:
        weights, scale = entry if entry is not None else (None, 0.0)
        for module, layer in self._layers.items():
            down, up = layer.lora_A[slot].weight, layer.lora_B[slot].weight
            a = weights.state_dict.get(f"{TRANSFORMER_PREFIX}{module}.lora_A.weight") if weights else None
            if weights is None or a is None:
                down.zero_()
                up.zero_()
                continue
            b = weights.state_dict[f"{TRANSFORMER_PREFIX}{module}.lora_B.weight"]
            rank = int(a.shape[0])
            factor = scale * _module_scaling(weights, rank)
            down[:rank].copy_(a)
            down[rank:].zero_()
            up[:, :rank].copy_(b.to(torch.float32) * factor)
            up[:, rank:].zero_()


def _module_scaling(weights: AdapterWeights, rank: int) -> float:
    """peft's LoRA scaling (alpha / rank, or alpha / sqrt(rank) with rsLoRA) from diffusers' metadata."""
    metadata = {
        key.removeprefix(TRANSFORMER_PREFIX): value for key, value in (weights.metadata or {}).items()
    }
    alpha = float(metadata.get("lora_alpha", rank))
    return alpha / (rank**0.5) if metadata.get("use_rslora") else alpha / rank


def check_slot_compatible(weights: AdapterWeights, *, name: str) -> None:
    """What adapter slots cannot express: a LoRA bias, or per-module alphas/ranks in the metadata."""
    if any(key.endswith(".lora_B.bias") for key in weights.state_dict):
        raise InvalidAdapter(f"{name}: LoRA biases are not supported with compile (adapter slots)")
    metadata = {
        key.removeprefix(TRANSFORMER_PREFIX): value for key, value in (weights.metadata or {}).items()
    }
    if metadata.get("alpha_pattern"):
        raise InvalidAdapter(f"{name}: per-module alphas (alpha_pattern) are not supported with compile")


def _unprefixed(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key.removeprefix(TRANSFORMER_PREFIX): value for key, value in (metadata or {}).items()}

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
# The longest header safetensors reads (MAX_HEADER_SIZE in its Rust crate, safetensors/src/tensor.rs).
_MAX_HEADER_BYTES = 100_000_000
_METADATA_ENTRY = "__metadata__"  # the header's one entry that is not a tensor
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL_OPCODE = 0x80  # PROTO opcode that starts every pickle of protocol 2 and later
_PICKLE_PROTOCOLS = range(2, 6)  # the protocol byte after PROTO: 2 to 5
# Kohya-style keys: `<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`; diffusers reads
# `.lora_down.weight` as the sign of this layout, and converts only kohya's `lora_unet_` FLUX.2 names.
_KOHYA_DOWN = ".lora_down.weight"
_KOHYA_SUFFIXES = (_KOHYA_DOWN, ".lora_up.weight", ".alpha")
_KOHYA_STYLE_LAYOUTS = (
    ("lora_transformer.", "OneTrainer's layout (lora_transformer.<module>.lora_down / lora_up / alpha)"),
    (
        "lora_transformer_",
        "OneTrainer's legacy layout (lora_transformer_<module>.lora_down / lora_up / alpha)",
    ),
    ("lora_unet_", "kohya's layout (lora_unet_<module>.lora_down / lora_up / alpha)"),
    ("lora_te", "kohya's layout (lora_te<n>_<module>.lora_down / lora_up / alpha)"),
)
_DORA_SUFFIXES = (".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight")


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
    accepted (diffusers' `Flux2LoraLoaderMixin.lora_state_dict` converts them); a file from which that
    conversion drops any key (text-encoder LoRA, DoRA magnitudes, a layout it does not know) is refused,
    naming the keys. `targets` is `linear_shapes(transformer)`: every adapted module must be one of them,
    with `lora_A` of shape (rank, in_features) and `lora_B` (out_features, rank), rank <= `max_rank`.
    None skips the module check (a model-free editor).
    """
    header = _read_header(data, name)
    try:
        from safetensors.torch import load as load_safetensors

        raw = load_safetensors(data)
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
        rank=max(ranks, default=0),
        modules=modules,
    )


def _read_header(data: bytes, name: str) -> dict[str, Any]:
    """The safetensors header of `data` as a JSON object, or `InvalidAdapter` saying what the file is.

    A file is recognised by what it positively is before anything else is guessed: an 8-byte
    little-endian length N, then `{`, then N bytes of JSON whose tensors fit the bytes that follow.
    Only a file that is not that is tried as a zip or a pickle. The order matters: safetensors pads its
    header to a multiple of 8, so one valid file in 32 has a length whose low byte is 0x80 (pickle's
    PROTO opcode, which is what the file's first byte then is), and a header of 0x04034B50 bytes makes a
    valid file begin with the zip magic `PK\\x03\\x04`.
    """
    if len(data) > _HEADER_LENGTH_BYTES and data[_HEADER_LENGTH_BYTES] == ord("{"):
        header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
        if header_length <= _MAX_HEADER_BYTES:
            return _parse_header(data, header_length, name)
    raise InvalidAdapter(f"{name}: {_what_it_is_instead(data)}")


def _parse_header(data: bytes, header_length: int, name: str) -> dict[str, Any]:
    after_length = len(data) - _HEADER_LENGTH_BYTES
    if header_length > after_length:
        raise InvalidAdapter(
            f"{name}: truncated: its safetensors header declares {header_length} bytes, the file has "
            f"{after_length} after the 8-byte length"
        )
    raw_header = data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length]
    try:
        header = json.loads(raw_header)
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
        raise InvalidAdapter(f"{name}: its safetensors header is malformed ({_first_line(exc)})") from exc
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{name}: its safetensors header is malformed (not a JSON object)")
    end = 0
    for key, entry in header.items():
        if key == _METADATA_ENTRY:
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise InvalidAdapter(
                    f"{name}: its safetensors header is malformed (__metadata__ is not a map of strings)"
                )
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise InvalidAdapter(
                f"{name}: its safetensors header is malformed (tensor {key!r} has no valid data_offsets)"
            )
        end = max(end, offsets[1])
    payload = after_length - header_length
    if end > payload:
        raise InvalidAdapter(
            f"{name}: truncated: its tensors need {end} bytes of data, the file has {payload}"
        )
    return header


def _what_it_is_instead(data: bytes) -> str:
    """Why `data`, which is not a safetensors file, is refused: what it looks like instead."""
    if data[:4] == _ZIP_MAGIC:
        return (
            "a zip archive (a torch.save checkpoint); only safetensors adapters are loaded, "
            "pickle-based formats never are"
        )
    if len(data) >= 2 and data[0] == _PICKLE_PROTOCOL_OPCODE and data[1] in _PICKLE_PROTOCOLS:
        return "a pickle file; only safetensors adapters are loaded, pickles never are"
    if len(data) < _HEADER_LENGTH_BYTES:
        return f"{len(data)} bytes, too short for a safetensors file"
    header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    if len(data) == _HEADER_LENGTH_BYTES and header_length <= _MAX_HEADER_BYTES:
        return f"truncated: its safetensors header declares {header_length} bytes, the file ends before it"
    if header_length > _MAX_HEADER_BYTES and data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + 1] == b"{":
        return (
            f"not a safetensors file (its header length, {header_length} bytes, is over the format's "
            f"limit of {_MAX_HEADER_BYTES})"
        )
    return "not a safetensors file (no JSON header after the 8-byte length)"


def _adapter_metadata(header: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    raw = (header.get(_METADATA_ENTRY) or {}).get(ADAPTER_METADATA_KEY)
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
    """diffusers' layout of `raw`, converted by diffusers itself; refuses every key the conversion drops.

    diffusers drops keys it cannot use with a log line at most (DoRA `dora_scale`, kohya text-encoder
    `lora_te*` keys, module names its kohya conversion does not know), and an adapter applied in part
    is worse than one refused.
    """
    from diffusers import Flux2KleinPipeline

    if not raw:
        raise InvalidAdapter(f"{name}: the file holds no tensors")
    layout = _layout(raw)
    dora = sorted(key for key in raw if key.endswith(_DORA_SUFFIXES))
    if dora:
        raise InvalidAdapter(
            f"{name}: a DoRA adapter ({_some_keys(dora)}); DoRA magnitudes are not supported, and diffusers "
            "would drop them and apply what is left as a plain LoRA"
        )
    if all(key.endswith(_WEIGHT_SUFFIXES) and not key.startswith(_KNOWN_PREFIXES) for key in raw):
        # Bare diffusers module paths (peft's `get_peft_model_state_dict` of the transformer itself):
        # diffusers would silently load nothing from these, so they are read as the transformer's.
        raw = {TRANSFORMER_PREFIX + key: tensor for key, tensor in raw.items()}
    unconverted = dict(raw)
    try:
        converted = Flux2KleinPipeline.lora_state_dict(unconverted)
    except Exception as exc:
        raise InvalidAdapter(
            f"{name}: not a FLUX.2 LoRA layout diffusers can read ({layout}; {_first_line(exc)})"
        ) from exc
    state_dict: dict[str, torch.Tensor] = dict(converted)
    if not state_dict:
        raise InvalidAdapter(
            f"{name}: {layout}; diffusers loads no FLUX.2 weights from it{_layout_hint(raw)}"
        )
    if any(_KOHYA_DOWN in key for key in raw):  # diffusers' own test for its kohya conversion
        # That conversion pops each key it converts from the dict it is given, and drops the keys left
        # over with only a log line (tests/pipeline/test_adapters.py holds it to both).
        dropped = sorted(unconverted)
        if dropped:
            raise InvalidAdapter(
                f"{name}: {layout}; diffusers would drop {len(dropped)} of its {len(raw)} keys "
                f"({_some_keys(dropped)}) and apply the rest; only LoRA weights of the FLUX.2 transformer "
                "are loaded, so the file is refused rather than applied in part"
            )
    if any(".lokr_" in key for key in state_dict):
        raise InvalidAdapter(f"{name}: a LoKr adapter; only LoRA adapters are supported")
    foreign = sorted(key for key in state_dict if not key.startswith(TRANSFORMER_PREFIX))
    if foreign:
        raise InvalidAdapter(
            f"{name}: keys that do not adapt the transformer ({_some_keys(foreign)}); only the transformer "
            "takes adapters"
        )
    not_lora = sorted(key for key in state_dict if not key.endswith(_WEIGHT_SUFFIXES))
    if not_lora:
        raise InvalidAdapter(
            f"{name}: keys that are not LoRA weights (lora_A / lora_B): {_some_keys(not_lora)}"
        )
    return state_dict


def _layout(raw: Mapping[str, torch.Tensor]) -> str:
    """The trainer layout `raw`'s keys look like, for messages."""
    keys = list(raw)
    if any(key.endswith(_KOHYA_SUFFIXES) for key in keys):
        for prefix, layout in _KOHYA_STYLE_LAYOUTS:
            if any(key.startswith(prefix) for key in keys):
                return layout
        return "a lora_down / lora_up / alpha layout"
    if any(key.startswith(TRANSFORMER_PREFIX) for key in keys):
        return "diffusers' layout (transformer.<module>.lora_A / lora_B)"
    if any(key.startswith("base_model.model.") for key in keys):
        return "peft's PeftModel layout (base_model.model.<module>.lora_A / lora_B)"
    if any(key.startswith("diffusion_model.") for key in keys):
        return "the ai-toolkit layout (diffusion_model.<module>.lora_A / lora_B)"
    return f"a layout with keys like {keys[0]!r}"


def _layout_hint(raw: Mapping[str, torch.Tensor]) -> str:
    if any(key.startswith("lora_transformer") for key in raw):
        return " (save it in OneTrainer's DIFFUSERS LoRA format, which diffusers reads)"
    return ""


def _some_keys(keys: Sequence[str], shown: int = 3) -> str:
    named = ", ".join(repr(key) for key in keys[:shown])
    return named if len(keys) <= shown else f"{named} and {len(keys) - shown} more"


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
        # In name order, not the request's: peft adds the adapters' outputs in the order they are set, and
        # float addition is not associative, so the order of the list would otherwise change the bytes.
        wanted = {key: value for key, value in sorted(wanted.items()) if value[1] != 0.0}
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

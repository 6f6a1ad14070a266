"""`klein-edit bench adapters`: what a LoRA adapter costs a request, on the production code paths.

Host side (the prepare stage, an I/O thread): `AdapterResolver.resolve` against a local S3 server, for
a cache miss (HEAD + GET + SHA-256 + safetensors parse + module/shape check) and a hit (HEAD + lookup).
GPU thread: `AdapterApplier.apply` on the loaded model for a cold load (peft layers injected and
filled), a switch between two resident adapters (`set_adapters`), a switch to no adapter
(`disable_lora`) and back; compile's `AdapterSlots.apply` (weights copied into a fixed slot of rank
`pipeline.max_adapter_rank`, and zeroed then refilled); and one edit with and without an active adapter.

Adapters are random LoRA weights of the requested rank on every attention projection of the model
(`to_q`, `to_k`, `to_v`, `to_out.0`, `add_*_proj`, `to_add_out`, the single blocks' fused projections).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from pydantic import SecretStr
from safetensors.torch import save

from consumer.cli.local_services import MotoServer
from consumer.lora_cache import AdapterCache, AdapterResolver
from pipeline import ActiveAdapter, EditJob, KleinEditor
from pipeline.adapters import AdapterApplier, AdapterSlots, linear_shapes, slot_modules
from pipeline.config import PipelineSettings
from pipeline.loader import load_pipeline
from schemas.requests import AdapterRef
from storage import ImageStore, S3Location, S3Settings

ATTENTION_SUFFIXES = (
    ".attn.to_q",
    ".attn.to_k",
    ".attn.to_v",
    ".attn.to_out.0",
    ".attn.add_q_proj",
    ".attn.add_k_proj",
    ".attn.add_v_proj",
    ".attn.to_add_out",
    ".attn.to_qkv_mlp_proj",
    ".attn.to_out",
)


def random_adapter(shapes: dict[str, tuple[int, int]], *, rank: int, seed: int) -> bytes:
    """A safetensors LoRA file (diffusers layout) with random weights on every attention projection."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module, (in_features, out_features) in shapes.items():
        if not module.endswith(ATTENTION_SUFFIXES):
            continue
        tensors[f"transformer.{module}.lora_A.weight"] = (
            torch.randn(rank, in_features, generator=generator) * 0.1
        )
        tensors[f"transformer.{module}.lora_B.weight"] = (
            torch.randn(out_features, rank, generator=generator) * 0.1
        )
    return save(tensors)


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def run_adapter_benchmark(pipeline: PipelineSettings, *, rank: int, repeats: int) -> dict[str, Any]:
    """Runs every measurement; returns the figures (milliseconds, medians of `repeats` runs)."""
    editor = KleinEditor.load(pipeline)
    pipe, _name = load_pipeline(pipeline)
    shapes = linear_shapes(pipe.transformer)
    files = [random_adapter(shapes, rank=rank, seed=seed) for seed in range(repeats + 2)]
    summary: dict[str, Any] = {"model": pipeline.model, "rank": rank, "adapter_bytes": len(files[0])}

    with MotoServer() as moto:
        bucket = f"adapters-{uuid.uuid4().hex[:8]}"
        s3 = S3Settings(
            endpoint_url=moto.endpoint_url,
            access_key_id=SecretStr("local"),
            secret_access_key=SecretStr("local"),
            input_bucket=bucket,
            output_bucket=bucket,
            adapter_buckets=[bucket],
        )
        store = ImageStore(s3)
        store.ensure_bucket(bucket)
        refs = []
        for i, data in enumerate(files):
            store.put_object(
                S3Location(bucket, f"a{i}.safetensors"), data, content_type="application/octet-stream"
            )
            refs.append(AdapterRef(uri=f"s3://{bucket}/a{i}.safetensors"))
        cache = AdapterCache(pipeline.adapter_cache_bytes)
        resolver = AdapterResolver(s3, source=store, editor=editor, cache=cache)
        misses = iter(refs)

        def miss() -> None:
            ref = next(misses)
            resolver.resolve_object(ref, S3Location(bucket, ref.uri.split("/", 3)[3]), "loras[0]")

        summary["host_miss_ms"] = _median_ms(miss, repeats)
        first = refs[0]
        summary["host_hit_ms"] = _median_ms(
            lambda: resolver.resolve_object(first, S3Location(bucket, "a0.safetensors"), "loras[0]"),
            repeats,
        )

    weights = [editor.parse_adapter(data, name=f"a{i}") for i, data in enumerate(files)]
    applier = AdapterApplier(pipe, resident=len(weights) + 1)
    cold = iter(weights[2:])
    with torch.inference_mode():
        summary["gpu_cold_load_ms"] = _median_ms(
            lambda: applier.apply([ActiveAdapter(next(cold), 1.0)]), repeats
        )
        a, b = ActiveAdapter(weights[0], 1.0), ActiveAdapter(weights[1], 0.8)
        applier.apply([a])
        applier.apply([b])
        flip = iter([a, b] * repeats)
        summary["gpu_switch_resident_ms"] = _median_ms(lambda: applier.apply([next(flip)]), repeats)
        summary["gpu_to_none_and_back_ms"] = _median_ms(
            lambda: (applier.apply([]), applier.apply([a])), repeats
        )

    # compile's fixed slots (the copy is what a compiled worker pays per new adapter; no compile needed).
    slot_pipe, _name = load_pipeline(pipeline)
    slot_rank = max(rank, pipeline.max_adapter_rank)
    slots = AdapterSlots(slot_pipe, slots=1, rank=slot_rank, modules=slot_modules(slot_pipe.transformer))
    swaps = iter([a, b] * repeats)
    summary["slot_swap_ms"] = _median_ms(lambda: slots.apply([next(swaps)]), repeats)
    summary["slot_to_none_ms"] = _median_ms(lambda: (slots.apply([]), slots.apply([a])), repeats)

    image = Image.new("RGB", (256, 256), (120, 90, 60))

    def edit(adapters: list[ActiveAdapter]) -> None:
        editor.edit(
            EditJob(
                images=[image],
                prompt="make it blue",
                num_inference_steps=4,
                guidance_scale=4.0,
                seed=1,
                width=256,
                height=256,
                adapters=adapters,
            )
        )

    edit([ActiveAdapter(weights[0], 1.0)])  # loaded once; the timed edits below find it resident
    summary["edit_without_adapter_ms"] = _median_ms(lambda: edit([]), repeats)
    summary["edit_with_adapter_ms"] = _median_ms(lambda: edit([ActiveAdapter(weights[0], 1.0)]), repeats)
    return summary


def print_adapter_summary(summary: dict[str, Any]) -> None:
    print(f"model {summary['model']}, rank {summary['rank']}, adapter file {summary['adapter_bytes']} bytes")
    for key, value in summary.items():
        if key.endswith("_ms"):
            print(f"  {key:28s} {value:9.2f} ms")
    print(json.dumps({key: round(v, 3) if isinstance(v, float) else v for key, v in summary.items()}))

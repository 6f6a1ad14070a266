"""Benchmark of the project's own edit path (`KleinEditor`) with random weights.

Two scales: the tiny test dims on the CPU (a smoke test of the harness), or the real FLUX.2 [klein] 9B
dims built directly on the GPU in bf16 (no download; weights are random, which does not change the cost).
For each option set the pipeline is rebuilt, the options applied exactly as at load time, one short edit
warms it up (compile happens there), then one timed edit runs with every transformer pass timed.

FLOPs per transformer pass (matmul FLOPs = 2 x multiply-accumulates); D = heads x head_dim,
H = mlp_ratio x D, L = double + single blocks, V = latent + reference tokens, T = text tokens, S = T + V:
    blocks     2 * S * L * (4 D^2 + 3 D H)    each token meets 4 D^2 weights (qkv, out) and 3 D H (SwiGLU:
                                              2 D H in, H D out) per block, double- and single-stream alike
    embedders  2 * (2 V C_in D + T J D)       x_embedder + proj_out (C_in = in_channels), context_embedder
                                              (J = joint_attention_dim)
    attention  4 * S^2 * D * L                QK^T and PV over the joint sequence
Modulation, norms and RoPE are O(S D) or per-sample and ignored (under 0.1 % at the 9B dims).
At 1024x1024 with one 1024x1024 image that is 161.3 TFLOP per pass (S = 512 + 4096 + 4096).

Run: python -m pipeline.tools.bench --real-dims --option-sets bf16,float8,compile,float8+compile
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.loader import resolve_dtype
from pipeline.optimize import apply_options
from pipeline.tiny import (
    assemble_pipeline,
    build_tokenizer,
    tiny_text_encoder_config,
    tiny_transformer_config,
    tiny_vae_config,
)
from pipeline.tools.sizing import QWEN3_8B, TRANSFORMER_9B

PROMPT = "Replace the background with a sunny beach and make the jacket red, keep the face unchanged."
TOKEN_STRIDE = 16  # 8x VAE downsampling, then 2x2 patches
REFERENCE_AREA_CAP = 1024 * 1024  # Flux2KleinPipeline shrinks larger condition images to this area

_OPTION_TOKENS = {"bf16", "base", "float8", "compile", "te-offload", "te-float8"}


def transformer_flops(
    config: dict[str, Any], *, text_tokens: int, image_tokens: int, reference_tokens: int
) -> dict[str, float]:
    """Analytic FLOPs of one Flux2Transformer2DModel forward at batch 1 (see the module docstring)."""
    d = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    h = int(d * float(config["mlp_ratio"]))
    layers = int(config["num_layers"]) + int(config["num_single_layers"])
    visual = image_tokens + reference_tokens
    seq = text_tokens + visual
    blocks = 2.0 * seq * layers * (4 * d * d + 3 * d * h)
    c_in = int(config["in_channels"])
    embed = 2.0 * (visual * 2 * c_in * d + text_tokens * int(config["joint_attention_dim"]) * d)
    attention = 4.0 * seq * seq * d * layers
    return {
        "sequence_tokens": float(seq),
        "linear_flops": blocks + embed,
        "attention_flops": attention,
        "total_flops": blocks + embed + attention,
    }


def image_tokens(width: int, height: int) -> int:
    """Tokens the pipeline makes from a condition image (area cap, then floored to /16)."""
    if width * height > REFERENCE_AREA_CAP:
        scale = (REFERENCE_AREA_CAP / (width * height)) ** 0.5
        width, height = int(width * scale), int(height * scale)
    return (width // TOKEN_STRIDE) * (height // TOKEN_STRIDE)


def parse_option_set(name: str, base: PipelineSettings) -> PipelineSettings:
    """'float8+compile' -> settings with those options on; 'bf16' (or 'base') is the plain baseline."""
    tokens = {token.strip() for token in name.split("+") if token.strip()}
    unknown = tokens - _OPTION_TOKENS
    if unknown or not tokens:
        raise ValueError(f"unknown option set {name!r}: use {sorted(_OPTION_TOKENS)} joined by '+'")
    placement = "float8" if "te-float8" in tokens else "cpu_offload" if "te-offload" in tokens else "gpu"
    return base.model_copy(
        update={
            "quantize_float8": "float8" in tokens,
            "compile": "compile" in tokens,
            "text_encoder_placement": placement,
        }
    )


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_random_pipeline(*, real_dims: bool, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A Flux2KleinPipeline with random weights on `device` in `dtype`.

    At the tiny dims this is the tiny model's directory, loaded by `load_pipeline` like any model. The 9B
    dims have no weights to load: they are created directly on the device in `dtype`.
    """
    if not real_dims:
        from pipeline.loader import load_pipeline

        dtype_name = str(dtype).removeprefix("torch.")
        tiny = PipelineSettings(model=TINY_RANDOM, device=device.type, dtype=dtype_name)  # type: ignore[arg-type]
        return load_pipeline(tiny)[0]
    diffusers: Any = importlib.import_module("diffusers")
    transformers: Any = importlib.import_module("transformers")
    transformer_config = TRANSFORMER_9B if real_dims else tiny_transformer_config()
    text_config = QWEN3_8B if real_dims else tiny_text_encoder_config()
    vae_config: dict[str, Any] = (
        {} if real_dims else tiny_vae_config()
    )  # AutoencoderKLFlux2() defaults = real
    # Creating on the device in the target dtype avoids a float32 CPU copy (36 GB for the 9B transformer).
    with torch.random.fork_rng(devices=[]), _default_dtype(dtype), device, torch.no_grad():
        torch.manual_seed(seed)
        transformer = diffusers.Flux2Transformer2DModel(**transformer_config).eval()
        text_encoder = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**text_config)).eval()
        vae = diffusers.AutoencoderKLFlux2(**vae_config).eval()
    return assemble_pipeline(
        transformer=transformer, text_encoder=text_encoder, vae=vae, tokenizer=build_tokenizer()
    )


class PassTimer:
    """Times every transformer forward: CUDA events on the GPU (no sync per pass), perf_counter on the CPU."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._open: Any = None
        self._spans: list[tuple[Any, Any]] = []
        self._handles = [
            module.register_forward_pre_hook(self._before),
            module.register_forward_hook(self._after),
        ]

    def _mark(self) -> Any:
        if self._cuda:
            event_class: Any = torch.cuda.Event  # untyped in torch's stubs
            event = event_class(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _before(self, _module: Any, _args: Any) -> None:
        self._open = self._mark()

    def _after(self, _module: Any, _args: Any, _output: Any) -> None:
        self._spans.append((self._open, self._mark()))

    def reset(self) -> None:
        self._spans.clear()

    def milliseconds(self) -> list[float]:
        if self._cuda:
            torch.cuda.synchronize()
            return [float(start.elapsed_time(end)) for start, end in self._spans]
        return [(end - start) * 1e3 for start, end in self._spans]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _gradient(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(height, width, 3, generator=generator) * 0.2
    ys = torch.linspace(0, 1, height).view(-1, 1, 1).expand(height, width, 1)
    xs = torch.linspace(0, 1, width).view(1, -1, 1).expand(height, width, 1)
    pixels = torch.cat([xs, ys, torch.full_like(xs, 0.5)], dim=-1) * 0.8 + noise
    return Image.fromarray((pixels.clamp(0, 1) * 255).to(torch.uint8).numpy(), "RGB")


def _benchmark_one(
    settings: PipelineSettings,
    option_set: str,
    *,
    real_dims: bool,
    steps: int,
    width: int,
    height: int,
    references: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    pipe = build_random_pipeline(real_dims=real_dims, device=device, dtype=dtype)
    if settings.text_encoder_placement == "cpu_offload":
        pipe.text_encoder.to("cpu")
    applied = apply_options(pipe, settings)
    build_s = time.perf_counter() - start
    editor = KleinEditor(pipe, settings, "random-9b" if real_dims else "random-tiny")
    images = [_gradient(width, height, seed) for seed in range(1 + references)]

    def job(num_steps: int, prompt: str) -> EditJob:
        return EditJob(
            images=images,
            prompt=prompt,
            num_inference_steps=num_steps,
            guidance_scale=4.0,
            seed=0,
            width=width,
            height=height,
        )

    timer = PassTimer(pipe.transformer, device)
    try:
        start = time.perf_counter()
        editor.edit(job(2, "warm-up"))  # compiles, autotunes and fills the negative-prompt cache
        warmup_s = time.perf_counter() - start
        timer.reset()
        output = editor.edit(job(steps, PROMPT))
        edit_s = output.inference_ms / 1e3
        pass_ms = timer.milliseconds()
    finally:
        timer.close()

    tokens = {
        "text": settings.max_sequence_length,
        "image": (width // TOKEN_STRIDE) * (height // TOKEN_STRIDE),
        "reference": sum(image_tokens(*image.size) for image in images),
    }
    transformer_config = TRANSFORMER_9B if real_dims else tiny_transformer_config()
    flops = transformer_flops(
        transformer_config,
        text_tokens=tokens["text"],
        image_tokens=tokens["image"],
        reference_tokens=tokens["reference"],
    )
    median_ms = statistics.median(pass_ms) if pass_ms else float("nan")
    stats = editor.memory_stats()
    result = {
        "option_set": option_set,
        "options_applied": applied,
        "dims": "klein-9b" if real_dims else "tiny",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "width": width,
        "height": height,
        "images": len(images),
        "steps": steps,
        "tokens_per_pass": tokens,
        "transformer_passes": len(pass_ms),
        "ms_per_pass_median": round(median_ms, 3),
        "ms_per_pass_mean": round(statistics.fmean(pass_ms), 3) if pass_ms else None,
        "transformer_s": round(sum(pass_ms) / 1e3, 3),
        "edit_s": round(edit_s, 3),
        "warmup_s": round(warmup_s, 3),
        "build_s": round(build_s, 3),
        "peak_memory_bytes": stats["peak_bytes"],
        "flops_per_pass": flops["total_flops"],
        "linear_flops_per_pass": flops["linear_flops"],
        "attention_flops_per_pass": flops["attention_flops"],
        "achieved_tflops": round(flops["total_flops"] / (median_ms / 1e3) / 1e12, 3) if pass_ms else None,
        "_pixels": np.asarray(output.image, dtype=np.int16),
    }
    del editor, pipe, output, timer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run_pipeline_benchmark(
    settings: PipelineSettings,
    *,
    real_dims: bool,
    steps: int,
    width: int,
    height: int,
    references: int,
    option_sets: list[str],
) -> list[dict[str, Any]]:
    """One result dict per option set; `references` counts images besides the base image."""
    if real_dims and not torch.cuda.is_available():
        raise RuntimeError(
            "the 9B dims need a CUDA GPU (about 35 GB in bf16); use real_dims=False on the CPU"
        )
    device = torch.device("cuda" if torch.cuda.is_available() and settings.device != "cpu" else "cpu")
    dtype = resolve_dtype(settings, device)
    plans = [(name, parse_option_set(name, settings)) for name in option_sets]  # fail before building
    results = [
        _benchmark_one(
            plan,
            name,
            real_dims=real_dims,
            steps=steps,
            width=width,
            height=height,
            references=references,
            device=device,
            dtype=dtype,
        )
        for name, plan in plans
    ]
    # Same weights (seeded build), inputs and seed: the pixel difference is what the option changes.
    reference = results[0].pop("_pixels")
    results[0]["vs_first_option_set"] = {"mean_abs_pixel_diff": 0.0, "max_abs_pixel_diff": 0}
    for result in results[1:]:
        diff = np.abs(result.pop("_pixels") - reference)
        result["vs_first_option_set"] = {
            "mean_abs_pixel_diff": round(float(diff.mean()), 3),
            "max_abs_pixel_diff": int(diff.max()),
        }
    return results


def main(argv: list[str] | None = None, *, prog: str = "python -m pipeline.tools.bench") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real-dims", action="store_true", help="9B dims on the GPU (default: tiny dims)")
    parser.add_argument(
        "--steps",
        type=int,
        default=4,
        metavar="N",
        help="denoising steps per timed edit, 1 or more (default: 4)",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=1024,
        metavar="PIXELS",
        help="edit width in pixels, 64-4096 (default: 1024)",
    )
    parser.add_argument(
        "--height",
        type=int,
        default=1024,
        metavar="PIXELS",
        help="edit height in pixels, 64-4096 (default: 1024)",
    )
    parser.add_argument(
        "--references",
        type=int,
        default=0,
        metavar="N",
        help="reference images besides the base image, 0-16 (default: 0)",
    )
    parser.add_argument(
        "--option-sets",
        default="bf16",
        metavar="SETS",
        help="comma-separated option sets, each of tokens joined by '+' from "
        f"{', '.join(sorted(_OPTION_TOKENS))}; e.g. bf16,float8+compile (default: bf16)",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto, cpu or cuda (default: auto)"
    )
    args = parser.parse_args(argv)
    results = run_pipeline_benchmark(
        PipelineSettings(model="random", device=args.device),
        real_dims=args.real_dims,
        steps=args.steps,
        width=args.width,
        height=args.height,
        references=args.references,
        option_sets=[name for name in args.option_sets.split(",") if name],
    )
    print_summary(results)
    return 0


def print_summary(results: list[dict[str, Any]]) -> None:
    """One human line per option set, then (as the last line) one JSON object with everything."""
    for r in results:
        per_step_s = r["transformer_s"] / max(1, r["steps"])
        other_s = max(0.0, r["edit_s"] - r["transformer_s"])
        r["est_50_step_edit_s"] = round(per_step_s * 50 + other_s, 3)
        print(
            f"{r['option_set']:>16} [{r['dims']}, {r['device_name']}, {r['dtype']}]: "
            f"{r['ms_per_pass_median']:.1f} ms/pass, {r['edit_s']:.2f} s per {r['steps']}-step edit "
            f"(~{r['est_50_step_edit_s']:.1f} s at 50 steps), peak {r['peak_memory_bytes'] / 1e9:.2f} GB, "
            f"{r['achieved_tflops']:.1f} TFLOP/s, "
            f"mean |pixel diff| vs {results[0]['option_set']} "
            f"{r['vs_first_option_set']['mean_abs_pixel_diff']:.2f}"
        )
    print(json.dumps({"mode": "pipeline", "results": results}))


if __name__ == "__main__":
    raise SystemExit(main())

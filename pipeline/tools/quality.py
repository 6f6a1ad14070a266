"""`klein-edit bench quality`: what an option set costs in quality, against the exact reference.

Every option set runs the same edits (each image of `--images` with each prompt of `--prompts`, each
seed) as the reference, `bf16` with everything off, through `KleinEditor.load` exactly as the worker
loads a model, one option set at a time (one model in memory at a time). Per option set it reports,
against the reference's outputs for the same image, prompt and seed: PSNR and SSIM (scikit-image,
8-bit RGB), LPIPS (the `lpips` package with AlexNet, only where the package and its backbone weights are
already on disk: nothing is downloaded), transformer passes, seconds per edit and the speed-up.

Option sets: the tokens of `pipeline.tools.bench.parse_option_set` (bf16, float8, compile, te-float8,
te-offload) plus `dbcache` (the step cache; `dbcache@0.12` sets its threshold), `interval@0.1-0.9`
(the guidance interval) and `attn@NAME` (the attention backend), joined with `+`.

With random weights (the tiny model) this only tests the mechanics: the quality cost of skipping steps
shows only with the real weights (docs/benchmarks.md has the protocol and the thresholds).
"""

from __future__ import annotations

import gc
import importlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from pipeline.config import PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.tools.bench import parse_option_set

REFERENCE = "bf16"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"  # what lpips.LPIPS(net="alex") loads through torchvision
DEFAULT_MAX_LPIPS = 0.05


@dataclass(frozen=True)
class Case:
    name: str
    image: Image.Image
    prompt: str
    seed: int


def load_cases(images: Path, prompts: Path, seeds: Sequence[int], size: int) -> list[Case]:
    """Each image (fitted to size x size, centre crop) with each prompt (one per line) and each seed."""
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    lines = [line.strip() for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not paths or not lines:
        raise ValueError(f"need at least one image in {images} and one prompt in {prompts}")
    cases = []
    for path in paths:
        with Image.open(path) as opened:
            image = ImageOps.fit(opened.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
        for index, prompt in enumerate(lines):
            for seed in seeds:
                cases.append(Case(f"{path.name}#p{index}#s{seed}", image, prompt, seed))
    return cases


def quality_settings(name: str, base: PipelineSettings) -> PipelineSettings:
    """`name` ('float8+dbcache@0.12+interval@0.1-0.9') applied to `base`."""
    plain: list[str] = []
    update: dict[str, Any] = {}
    for token in (t.strip() for t in name.split("+") if t.strip()):
        key, _, value = token.partition("@")
        if key == "dbcache":
            update["step_cache"] = "dbcache"
            if value:
                update["step_cache_threshold"] = float(value)
        elif key == "interval":
            start, _, end = value.partition("-")
            update["guidance_interval"] = (float(start), float(end))
        elif key == "attn":
            update["attention"] = value
        else:
            plain.append(token)
    settings = parse_option_set("+".join(plain) or REFERENCE, base)
    return PipelineSettings.model_validate({**settings.model_dump(), **update})


def lpips_scorer(device: torch.device) -> tuple[Callable[[np.ndarray, np.ndarray], float] | None, str | None]:
    """An LPIPS function on 8-bit RGB arrays, or (None, why not). Never downloads anything."""
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        return None, "the lpips package is not installed"
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE
    if not backbone.is_file():
        return None, f"LPIPS backbone weights not present at {backbone}"
    model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    def score(a: np.ndarray, b: np.ndarray) -> float:
        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)

        with torch.inference_mode():
            return float(model(tensor(a), tensor(b)).item())

    return score, None


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    metrics: Any = importlib.import_module("skimage.metrics")  # untyped
    peak_signal_noise_ratio, structural_similarity = (
        metrics.peak_signal_noise_ratio,
        metrics.structural_similarity,
    )
    identical = bool(np.array_equal(reference, other))
    psnr = float("inf") if identical else float(peak_signal_noise_ratio(reference, other, data_range=255))
    ssim = float(structural_similarity(reference, other, channel_axis=2, data_range=255))
    return {"psnr": psnr, "ssim": ssim}


def run_option_set(
    settings: PipelineSettings, cases: Sequence[Case], *, steps: int, guidance: float
) -> list[dict[str, Any]]:
    editor = KleinEditor.load(settings)
    try:
        editor.warm_up()  # compile and caches outside the timed edits
        runs = []
        for case in cases:
            output = editor.edit(
                EditJob(
                    images=[case.image],
                    prompt=case.prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    seed=case.seed,
                    width=case.image.width,
                    height=case.image.height,
                )
            )
            runs.append(
                {
                    "pixels": np.asarray(output.image.convert("RGB"), dtype=np.uint8),
                    "seconds": output.inference_ms / 1e3,
                    "passes": output.transformer_passes,
                }
            )
        return runs
    finally:
        del editor
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def run_quality_benchmark(
    base: PipelineSettings,
    option_sets: Sequence[str],
    cases: Sequence[Case],
    *,
    steps: int,
    guidance: float,
    max_lpips: float = DEFAULT_MAX_LPIPS,
) -> dict[str, Any]:
    """The reference first, then each option set; one summary dict (see the module docstring)."""
    plans = [(name, quality_settings(name, base)) for name in [REFERENCE, *option_sets]]  # fail early
    device = torch.device("cuda" if torch.cuda.is_available() and base.device != "cpu" else "cpu")
    lpips_fn, lpips_missing = lpips_scorer(device)
    reference: list[dict[str, Any]] = []
    results = []
    for name, settings in plans:
        runs = run_option_set(settings, cases, steps=steps, guidance=guidance)
        if not reference:
            reference = runs
        scores = [compare(ref["pixels"], run["pixels"]) for ref, run in zip(reference, runs, strict=True)]
        lpips_values = (
            [lpips_fn(ref["pixels"], run["pixels"]) for ref, run in zip(reference, runs, strict=True)]
            if lpips_fn is not None
            else []
        )
        finite_psnr = [s["psnr"] for s in scores if s["psnr"] != float("inf")]
        seconds = statistics.fmean(run["seconds"] for run in runs)
        reference_seconds = statistics.fmean(run["seconds"] for run in reference)
        mean_lpips = _mean(lpips_values)
        results.append(
            {
                "option_set": name,
                "edits": len(runs),
                "psnr_mean": _mean(finite_psnr) if finite_psnr else "inf",
                "psnr_min": round(min(finite_psnr), 4) if finite_psnr else "inf",
                "ssim_mean": _mean([s["ssim"] for s in scores]),
                "ssim_min": round(min(s["ssim"] for s in scores), 4),
                "lpips_mean": mean_lpips,
                "transformer_passes_mean": _mean([run["passes"] for run in runs]),
                "seconds_mean": round(seconds, 4),
                "speedup": round(reference_seconds / seconds, 3) if seconds > 0 else None,
                "passes_gate": None if mean_lpips is None else mean_lpips <= max_lpips,
            }
        )
    return {
        "mode": "quality",
        "reference": REFERENCE,
        "steps": steps,
        "guidance_scale": guidance,
        "cases": [case.name for case in cases],
        "lpips": "alex" if lpips_fn is not None else f"unavailable: {lpips_missing}",
        "max_lpips": max_lpips,
        "results": results,
        "time": round(time.time(), 3),
    }


def print_quality_summary(summary: dict[str, Any]) -> None:
    """A table, then (as the last line) one JSON object with everything."""
    columns = [("option set", 28), ("PSNR dB", 9), ("SSIM", 7), ("LPIPS", 7), ("passes", 7), ("s/edit", 8)]
    print(" ".join(f"{title:>{width}}" for title, width in columns) + f" {'speed-up':>8}")
    for r in summary["results"]:
        lpips = "-" if r["lpips_mean"] is None else f"{r['lpips_mean']:.4f}"
        psnr = r["psnr_mean"] if isinstance(r["psnr_mean"], str) else f"{r['psnr_mean']:.2f}"
        print(
            f"{r['option_set']:>28} {psnr:>9} {r['ssim_mean']:>7.4f} {lpips:>7} "
            f"{r['transformer_passes_mean']!s:>7} {r['seconds_mean']:>8.3f} {r['speedup']!s:>8}"
        )
    print(f"LPIPS: {summary['lpips']}; gate: mean LPIPS <= {summary['max_lpips']}")
    print(json.dumps(summary))

"""Benchmark of the colour check of recolor requests (issue 20): accuracy before and after correction, speed.

Each case is a baseline, an output whose target missed the requested colour by a known CIEDE2000 (the
injected error; 0 is an exact recolour), and the truth (the same image in the requested colour):

- synthetic product renders (`pipeline.color.scenes.render_product`: albedo x shading x texture,
  specular, a white logo) for every colour x seed x error;
- with `--images DIR`, real photos too: a central ellipse of each is recoloured
  (`scenes.recolor_region`) to the off colour for the output and to the requested one for the truth,
  with independent noise of 2 levels on baseline and output (a VAE round trip's floor, roughly).
  An ellipse of a photo is not one material (coffee(): white cup, coffee, red china, table), so it
  has no single albedo: the colour read there can differ from the requested one by several ΔE00 even
  for the truth, and "truth after" then measures that difference of definitions. Photo cases show
  speed, convergence and preservation on real texture, not the accuracy of the estimate.

Every case is measured (`measure_recolor`) and corrected (`correct_recolor`), each timed. Printed: per
injected error, the ΔE00 the check reads before and after correction (p50, p90, max), the ΔE00 of the
pixels against the truth (median over the object's pixels, then p50 and max over cases), how often
the correction was kept, the preservation outside the region, and the time per output megapixel of
measuring and of measuring plus correcting; the last line is one JSON object with every case. Times
depend on the machine and its load: compare runs on the same machine only.

Run: python -m pipeline.tools.color_bench --size 1024 --seeds 0,1 --errors 0,4,6,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import skimage.morphology
from PIL import Image

from pipeline.color.correct import correct_recolor
from pipeline.color.measure import measure_recolor
from pipeline.color.report import ColorTarget
from pipeline.color.scenes import Garment, add_noise, offset_color, recolor_region, render_product
from pipeline.color.spaces import delta_e00, srgb_to_lab

_morphology: Any = skimage.morphology  # unannotated functions
Rgb8 = npt.NDArray[np.uint8]

DEFAULT_COLORS = "#1E90FF,#D62828,#2A9D8F,#F4D35E,#6A4C93,#C8306E,#1A1A1A"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass(frozen=True)
class Case:
    """One benchmark case: where it comes from, the colours, and the images (uint8 HxWx3).

    `body`: bool HxW, the target's pixels the truth comparison reads (the object without its logo,
    eroded by 3 px away from mixed edges).
    """

    source: str
    requested: str
    off_color: str
    error: float
    seed: int
    baseline: Rgb8
    output: Rgb8
    truth: Rgb8
    body: npt.NDArray[np.bool_]


def synthetic_cases(
    size: int, colors: Sequence[str], seeds: Sequence[int], errors: Sequence[float]
) -> Iterator[Case]:
    """Renders of a grey product recoloured to each colour, off by each error, for each seed."""
    for seed in seeds:
        light = ((-0.35, -0.45), (0.0, 0.0), (0.6, -0.2))[seed % 3]
        baseline = render_product(
            [Garment("#8A8A8A")], size=(size, size), light=light, seed=seed, noise_seed=1
        )
        for requested in colors:
            truth = render_product(
                [Garment(requested)], size=(size, size), light=light, seed=seed, noise_seed=2
            )
            body = _morphology.erosion(truth.objects[0] & ~truth.logos[0], _morphology.disk(3))
            for error in errors:
                off = requested if error == 0 else offset_color(requested, error, seed=seed)
                output = render_product(
                    [Garment(off)], size=(size, size), light=light, seed=seed, noise_seed=2
                )
                yield Case(
                    "render", requested, off, error, seed, baseline.image, output.image, truth.image, body
                )


def photo_cases(
    folder: Path, size: int, colors: Sequence[str], seeds: Sequence[int], errors: Sequence[float]
) -> Iterator[Case]:
    """Each photo in `folder` (resized to `size` px on its long side) with a central ellipse recoloured."""
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        photo.thumbnail((size, size))
        pixels = np.asarray(photo)
        height, width = pixels.shape[:2]
        yy, xx = np.mgrid[0:height, 0:width]
        region = ((xx - width / 2) / (width * 0.3)) ** 2 + ((yy - height / 2) / (height * 0.3)) ** 2 < 1
        body = _morphology.erosion(region, _morphology.disk(3))
        for seed in seeds:
            baseline = add_noise(pixels, sigma=2.0, seed=seed)
            for requested in colors:
                truth = add_noise(recolor_region(pixels, region, requested), sigma=2.0, seed=seed + 1)
                for error in errors:
                    off = requested if error == 0 else offset_color(requested, error, seed=seed)
                    output = add_noise(recolor_region(pixels, region, off), sigma=2.0, seed=seed + 1)
                    yield Case(path.name, requested, off, error, seed, baseline, output, truth, body)


def run_case(case: Case, *, kl: float, max_delta_e: float) -> dict[str, Any]:
    """Measures and corrects one case; the figures of one JSON record."""
    megapixels = case.output.shape[0] * case.output.shape[1] / 1e6
    targets = [ColorTarget("target", case.requested)]
    started = time.perf_counter()
    before = measure_recolor(case.baseline, case.output, targets, kl=kl, max_delta_e=max_delta_e)
    measured = time.perf_counter()
    result = correct_recolor(case.baseline, case.output, before)
    corrected = time.perf_counter()
    truth_lab = srgb_to_lab(case.truth)[case.body]
    return {
        "source": case.source,
        "requested": case.requested,
        "off_color": case.off_color,
        "injected_delta_e": case.error,
        "seed": case.seed,
        "megapixels": round(megapixels, 4),
        "measure_ms_per_mp": round((measured - started) * 1000 / megapixels, 1),
        "measure_correct_ms_per_mp": round((corrected - started) * 1000 / megapixels, 1),
        "truth_delta_e_before": _median_delta_e(truth_lab, case.output, case.body),
        "truth_delta_e_after": _median_delta_e(truth_lab, result.image[..., :3], case.body),
        **result.to_dict(),
    }


def _read(rows: Sequence[dict[str, Any]], report: str) -> list[float]:
    """The target's ΔE00 in each row's `report` ("before" or "after"), where it was measured."""
    values = [row[report]["targets"][0]["delta_e"] for row in rows]
    return [value for value in values if value is not None]


def _median_delta_e(truth_lab: npt.NDArray[Any], image: Rgb8, body: npt.NDArray[np.bool_]) -> float:
    return round(float(np.median(delta_e00(truth_lab, srgb_to_lab(image)[body]))), 4)


def _spread(values: Sequence[float]) -> str:
    """'p50 / p90 / max' of `values`."""
    if not values:
        return "-"
    array = np.asarray(values, dtype=np.float64)
    return f"{np.median(array):5.2f} / {np.percentile(array, 90):5.2f} / {array.max():5.2f}"


def _groups(records: Sequence[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Records by (kind, injected error): kind "render" (the truth is the albedo) or "photo" (the truth is
    `recolor_region`'s own recolour, whose albedo itself reads about 1-1.5 ΔE00 off the colour)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for record in records:
        kind = "render" if record["source"] == "render" else "photo"
        groups.setdefault((kind, record["injected_delta_e"]), []).append(record)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0] != "render", item[0][1])))


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind and injected error, and the speed: the figures the table prints, as numbers."""

    def figures(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        kept = [r["after"]["preservation"] for r in rows]
        return {
            "cases": len(rows),
            "measured_before": _quantiles(_read(rows, "before")),
            "measured_after": _quantiles(_read(rows, "after")),
            "truth_before": _quantiles([r["truth_delta_e_before"] for r in rows]),
            "truth_after": _quantiles([r["truth_delta_e_after"] for r in rows]),
            "applied": sum(1 for r in rows if r["applied"]),
            "preservation_delta_e_mean_max": max((p["delta_e_mean"] or 0.0) for p in kept),
            "preservation_delta_e_p95_max": max((p["delta_e_p95"] or 0.0) for p in kept),
            "preservation_ssim_l_min": min((p["ssim_l"] if p["ssim_l"] is not None else 1.0) for p in kept),
            "ssim_l_region_min": min(
                (r["ssim_l_region"] for r in rows if r["ssim_l_region"] is not None), default=None
            ),
        }

    def speed(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {
            "megapixels_median": statistics.median(r["megapixels"] for r in rows),
            "measure_median": statistics.median(r["measure_ms_per_mp"] for r in rows),
            "measure_max": max(r["measure_ms_per_mp"] for r in rows),
            "measure_correct_median": statistics.median(r["measure_correct_ms_per_mp"] for r in rows),
            "measure_correct_max": max(r["measure_correct_ms_per_mp"] for r in rows),
        }

    kinds = sorted({kind for kind, _ in _groups(records)}, key=lambda kind: kind != "render")
    return {
        "groups": {f"{kind} {error}": figures(rows) for (kind, error), rows in _groups(records).items()},
        "speed_ms_per_mp": {
            kind: speed([row for (k, _), rows in _groups(records).items() if k == kind for row in rows])
            for kind in kinds
        },
    }


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.median(array)), 3),
        "p90": round(float(np.percentile(array, 90)), 3),
        "max": round(float(array.max()), 3),
    }


def print_table(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The human table, then (as the last line) one JSON object with every case and the summary."""
    print("ΔE00 (kL as given): p50 / p90 / max over cases; truth = median over the object's pixels")
    print(
        f"{'kind':>6} {'error':>5} {'cases':>5}  {'measured before':>21}  {'measured after':>21}  "
        f"{'truth before':>21}  {'truth after':>21}  {'kept':>4}  {'rest ΔE mean':>12}  {'rest SSIM':>9}"
    )
    for (kind, error), rows in _groups(records).items():
        figures = summary["groups"][f"{kind} {error}"]
        print(
            f"{kind:>6} {error:5.1f} {len(rows):5d}  {_spread(_read(rows, 'before')):>21}  "
            f"{_spread(_read(rows, 'after')):>21}  "
            f"{_spread([r['truth_delta_e_before'] for r in rows]):>21}  "
            f"{_spread([r['truth_delta_e_after'] for r in rows]):>21}  {figures['applied']:4d}  "
            f"{figures['preservation_delta_e_mean_max']:12.3f}  {figures['preservation_ssim_l_min']:9.4f}"
        )
    for kind, speed in summary["speed_ms_per_mp"].items():
        print(
            f"{kind} ({speed['megapixels_median']:.2f} MP): measure {speed['measure_median']:.0f} ms/MP "
            f"median, {speed['measure_max']:.0f} max; measure + correct "
            f"{speed['measure_correct_median']:.0f} ms/MP median, {speed['measure_correct_max']:.0f} max"
        )
    print(json.dumps({"mode": "color", "summary": summary, "cases": list(records)}, sort_keys=True))


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None, *, prog: str = "python -m pipeline.tools.color_bench") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, default=1024, metavar="PIXELS", help="render side, 64-4096 (default: 1024)"
    )
    parser.add_argument(
        "--colors",
        default=DEFAULT_COLORS,
        metavar="HEXES",
        help=f"comma-separated #RRGGBB (default: {DEFAULT_COLORS})",
    )
    parser.add_argument("--seeds", default="0,1", metavar="N,...", help="product seeds (default: 0,1)")
    parser.add_argument(
        "--errors",
        default="0,4,6,8",
        metavar="ΔE,...",
        help="injected ΔE00 errors, 0 = exact (default: 0,4,6,8)",
    )
    parser.add_argument("--images", type=Path, metavar="DIR", help="also recolour the photos in this folder")
    parser.add_argument(
        "--kl", type=float, default=1.0, help="kL of the per-target ΔE00: 2 for textiles (default: 1)"
    )
    parser.add_argument("--max-delta-e", type=float, default=3.0, help="the gate, 0.5-20 ΔE00 (default: 3)")
    args = parser.parse_args(argv)
    if not 64 <= args.size <= 4096:
        parser.error("--size must be within 64-4096")
    colors = [color.strip() for color in args.colors.split(",") if color.strip()]
    seeds, errors = _ints(args.seeds), _floats(args.errors)
    run_case(
        next(synthetic_cases(64, colors[:1], [0], [4.0])), kl=args.kl, max_delta_e=args.max_delta_e
    )  # warm-up
    cases: Iterator[Case] = synthetic_cases(args.size, colors, seeds, errors)
    records = [run_case(case, kl=args.kl, max_delta_e=args.max_delta_e) for case in cases]
    if args.images is not None:
        photos = photo_cases(args.images, args.size, colors, seeds, errors)
        records += [run_case(case, kl=args.kl, max_delta_e=args.max_delta_e) for case in photos]
    print_table(records, summarize(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

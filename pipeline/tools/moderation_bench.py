"""Benchmark of the moderation image classifier: milliseconds per image at the real ViT-B/16 size.

Builds a `ViTForImageClassification` with `ViTConfig()`'s defaults (ViT-B/16 at 224 px, 86M parameters:
the architecture of Falconsai/nsfw_image_detection) and random weights, writes it with its
`ViTImageProcessor` to a temporary directory, and loads it through `ImageModerator.load`, the path the
worker takes. Random weights cost what trained ones do. Each timed call is `ImageModerator.score` on a
batch, so a figure includes the processor's resize and normalisation (from a 1024x1024 output it is
most of the difference to a 224x224 input) and the forward pass, in float32. Median of `--repeats`
calls after one warm-up call.

Run: python -m pipeline.tools.moderation_bench --device cpu --batch-sizes 1,4 --image-sizes 224,1024
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.moderation.image_classifier import ImageModerator
from pipeline.moderation.loading import quiet_transformers
from pipeline.moderation.settings import ModerationSettings
from pipeline.moderation.tiny import IMAGE_LABELS


def vit_b16_config() -> Any:
    """`ViTConfig()`'s defaults are ViT-B/16 at 224 px (hidden 768, 12 layers, 12 heads, MLP 3072); two
    labels as the default classifier has."""
    transformers: Any = importlib.import_module("transformers")
    return transformers.ViTConfig(
        id2label=IMAGE_LABELS, label2id={name: index for index, name in IMAGE_LABELS.items()}
    )


def write_random_vit_b16(directory: str | Path, seed: int = 0) -> Path:
    """A random-weight ViT-B/16 image classifier (labels normal, nsfw) and its processor in `directory`."""
    transformers: Any = importlib.import_module("transformers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.ViTForImageClassification(vit_b16_config()).eval()
    target = Path(directory)
    transformers.utils.logging.disable_progress_bar()
    with quiet_transformers():
        model.save_pretrained(str(target), safe_serialization=True)
        transformers.ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(str(target))
    return target


def synthetic_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8), "RGB")
        for _ in range(count)
    ]


def benchmark(
    moderator: ImageModerator, *, batch_sizes: Sequence[int], image_sizes: Sequence[int], repeats: int
) -> list[dict[str, Any]]:
    """One result per (input size, batch size): median and min milliseconds per image over `repeats`."""
    results: list[dict[str, Any]] = []
    for size in image_sizes:
        for batch in batch_sizes:
            images = synthetic_images(batch, size)
            moderator.score(images)  # warm-up: first-call allocations, kernel selection
            seconds: list[float] = []
            for _ in range(repeats):
                if moderator.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                moderator.score(images)  # returns Python floats: the device work is finished
                seconds.append(time.perf_counter() - start)
            results.append(
                {
                    "input_size": size,
                    "batch": batch,
                    "ms_per_image_median": round(statistics.median(seconds) * 1000 / batch, 2),
                    "ms_per_image_min": round(min(seconds) * 1000 / batch, 2),
                    "repeats": repeats,
                }
            )
    return results


def _machine(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            model = next(
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            )
            name = model
        except (OSError, StopIteration):
            pass
    return {"device": str(device), "device_name": name, "torch_threads": torch.get_num_threads()}


def _sizes(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None, *, prog: str = "python -m pipeline.tools.moderation_bench") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: cpu)")
    parser.add_argument("--batch-sizes", type=_sizes, default=[1, 4], metavar="N,N", help="(default: 1,4)")
    parser.add_argument(
        "--image-sizes",
        type=_sizes,
        default=[224, 1024],
        metavar="PIXELS,PIXELS",
        help="square input sizes before the processor's resize (default: 224,1024)",
    )
    parser.add_argument("--repeats", type=int, default=10, metavar="N", help="timed calls each (default: 10)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="vit-b16-") as directory:
        write_random_vit_b16(directory)
        moderator = ImageModerator.load(
            ModerationSettings(model=directory, device="cpu" if device.type == "cpu" else "gpu"),
            device=device,
        )
        results = benchmark(
            moderator, batch_sizes=args.batch_sizes, image_sizes=args.image_sizes, repeats=args.repeats
        )
    for r in results:
        print(
            f"ViT-B/16 float32, {r['input_size']}x{r['input_size']} input, batch {r['batch']}: "
            f"{r['ms_per_image_median']:.1f} ms/image (min {r['ms_per_image_min']:.1f})"
        )
    print(
        json.dumps(
            {
                "mode": "moderation",
                "model": "ViT-B/16 (random weights)",
                **_machine(device),
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Host memory under large JPEG inputs: RSS after many decodes on the worker's I/O-thread layout.

Decodes `--images` JPEGs of `--megapixels` each with `pipeline.decode_image` on 8 threads (the worker's
I/O pool), `--in-flight` at a time, then sizes each to the conditioning size, as the prepare stage does;
prints the peak and final RSS (MiB) as one JSON line. Run it with and without `MALLOC_ARENA_MAX=2` and
`--no-draft` to compare; figures are in docs/operations.md (host memory).

    python -m benchmarks.host_memory --images 60 --megapixels 36
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from pipeline import decode_image, plan_geometry, to_conditioning_size


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=60, help="decodes in all (default 60)")
    parser.add_argument("--megapixels", type=float, default=36.0, help="size of each JPEG (default 36)")
    parser.add_argument("--in-flight", type=int, default=4, help="decodes at once (default 4)")
    parser.add_argument("--no-draft", action="store_true", help="decode at full size (no draft())")
    args = parser.parse_args(argv)
    side = int((args.megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    # A smooth image with some noise compresses like a photo (a few MB), not like noise.
    base = np.linspace(0, 255, side, dtype=np.float32)
    pixels = (base[None, :, None] * 0.5 + base[:, None, None] * 0.5 + rng.normal(0, 8, (side, side, 3))).clip(
        0, 255
    )
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    del pixels
    peak = rss_mib()
    lock = threading.Lock()
    gate = threading.Semaphore(args.in_flight)

    def one(_: int) -> None:
        nonlocal peak
        with gate:
            decoded = decode_image(
                data,
                max_pixels=100_000_000,
                formats=["JPEG"],
                name="image",
                draft_pixels=None if args.no_draft else 4_000_000,
            )
            size = plan_geometry([decoded.image.size], None, 1.05).inputs[0]
            to_conditioning_size(decoded.image, size)
            with lock:
                peak = max(peak, rss_mib())

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(args.images)))
    print(
        json.dumps(
            {
                "images": args.images,
                "megapixels": args.megapixels,
                "jpeg_bytes": len(data),
                "draft": not args.no_draft,
                "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
                "peak_rss_mib": round(peak, 1),
                "final_rss_mib": round(rss_mib(), 1),
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

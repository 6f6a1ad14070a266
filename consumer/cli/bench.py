"""`klein-edit bench`: the benchmarks, one mode each (docs/benchmarks.md).

- `orchestration`: does the GPU thread ever wait for Kafka and S3? (`consumer.cli.orchestration_bench`)
- `adapters`: what a LoRA adapter costs a request (`consumer.cli.adapter_bench`)
- `quality`: PSNR, SSIM, LPIPS and speed-up of option sets against bf16 (`pipeline.tools.quality`)
- `pipeline`: the real pipeline code path with random weights (`pipeline.tools.bench`, whose own parser
  takes the flags)

Each mode's module is imported when the mode runs: they import torch, aiokafka and the worker runtime.
`adapters` and `quality` exit with 1 for a model that cannot be loaded, as for any run that measured
nothing (the other commands exit with 3).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path

from consumer.cli.command import (
    EXIT_FAILED,
    NO_S3,
    CommandFailed,
    HelpFormatter,
    add_command,
    configured,
    kafka_unreachable,
    positive_float,
    positive_int,
    storage_failed,
)
from pipeline.errors import ModelLoadError
from schemas.errors import KleinEditError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "bench",
        "benchmarks: orchestration (stand-in editor), adapters (LoRA costs), pipeline (random weights) or "
        "quality (option sets against bf16)",
    )
    parser.set_defaults(run=run)
    modes = parser.add_subparsers(dest="subcommand", required=True, metavar="MODE")
    b = modes.add_parser(
        "orchestration",
        help="GPU-thread duty cycle with real Kafka and S3, vs a serial loop",
        description="GPU-thread duty cycle with real Kafka and S3 and a stand-in editor, vs a serial loop "
        "(docs/benchmarks.md).",
        formatter_class=HelpFormatter,
    )
    b.add_argument(
        "--jobs", type=positive_int, default=40, metavar="N", help="requests, 1 or more (default: 40)"
    )
    b.add_argument(
        "--edit-ms",
        type=positive_float,
        default=200.0,
        metavar="MS",
        help="GPU time of one stand-in edit, in milliseconds, more than 0 (default: 200)",
    )
    b.add_argument(
        "--image-mb",
        type=positive_float,
        default=2.0,
        metavar="MB",
        help="size of each input image, in megabytes, more than 0 (default: 2)",
    )
    b.add_argument(
        "--no-embedded",
        action="store_true",
        help="use the configured Kafka and S3 instead of local ones (default: off)",
    )
    b = modes.add_parser(
        "adapters",
        help="LoRA adapter costs: host cache miss and hit, GPU load and switch (tiny model by default)",
        description="LoRA adapter costs on the production code paths: cache miss and hit against a local "
        "S3 server, cold load, resident switch and switch to none on the GPU thread (docs/benchmarks.md).",
        formatter_class=HelpFormatter,
    )
    b.add_argument(
        "--rank", type=positive_int, default=16, metavar="N", help="LoRA rank, 1 or more (default: 16)"
    )
    b.add_argument(
        "--repeats",
        type=positive_int,
        default=10,
        metavar="N",
        help="runs per figure, 1 or more (default: 10)",
    )
    b = modes.add_parser(
        "quality",
        help="PSNR, SSIM, LPIPS, passes and speed-up of option sets against bf16 with everything off",
        description="Runs each option set on the same images, prompts and seeds as the reference (bf16, "
        "everything off) with the configured model and compares the outputs (docs/benchmarks.md: the "
        "protocol; random weights cannot show the quality cost).",
        formatter_class=HelpFormatter,
    )
    b.add_argument(
        "--option-sets",
        required=True,
        metavar="A,B",
        help="comma-separated, e.g. float8+compile,dbcache@0.12,interval@0.1-0.9,attn@sage (required)",
    )
    b.add_argument("--images", required=True, metavar="DIR", help="PNG/JPEG/WebP inputs (required)")
    b.add_argument("--prompts", required=True, metavar="FILE", help="one prompt per line (required)")
    b.add_argument("--seeds", default="0", metavar="0,1", help="comma-separated seeds (default: 0)")
    b.add_argument(
        "--steps",
        type=positive_int,
        default=50,
        metavar="N",
        help="denoising steps, 1 or more (default: 50)",
    )
    b.add_argument(
        "--guidance", type=float, default=4.0, metavar="SCALE", help="guidance scale, 0 to 30 (default: 4.0)"
    )
    b.add_argument(
        "--size",
        type=positive_int,
        default=1024,
        metavar="PIXELS",
        help="side of the square each input is fitted to, 1 or more (default: 1024)",
    )
    b.add_argument(
        "--max-lpips",
        type=float,
        default=0.05,
        metavar="SCALE",
        help="gate on mean LPIPS, 0 to 1 (default: 0.05)",
    )
    b = modes.add_parser(
        "pipeline",
        help="the real Flux2KleinPipeline code path with random weights (its options: bench pipeline --help)",
        add_help=False,
    )
    b.set_defaults(accepts_passthrough=True)  # main hands the rest of the command line on


def run(args: argparse.Namespace) -> int:
    modes: dict[str, Callable[[argparse.Namespace], int]] = {
        "orchestration": _orchestration,
        "adapters": _adapters,
        "quality": _quality,
        "pipeline": _pipeline,
    }
    return modes[args.subcommand](args)


def _orchestration(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from consumer.cli.local_services import LOCAL_S3, ServiceError
    from consumer.cli.orchestration_bench import print_orchestration_summary, run_orchestration_benchmark
    from consumer.worker import KafkaAccessDenied

    settings = configured(args, **({} if args.no_embedded else LOCAL_S3))
    try:
        summary = asyncio.run(
            run_orchestration_benchmark(
                settings,
                jobs=args.jobs,
                edit_ms=args.edit_ms,
                image_mb=args.image_mb,
                embedded=not args.no_embedded,
            )
        )
    except ServiceError as exc:
        raise CommandFailed(str(exc)) from exc
    except KafkaAccessDenied as exc:
        raise CommandFailed(str(exc)) from exc
    except KafkaError as exc:
        raise kafka_unreachable(settings, exc) from exc
    except KleinEditError as exc:
        raise storage_failed(settings, exc) from exc
    print_orchestration_summary(summary)
    return 0


def _adapters(args: argparse.Namespace) -> int:
    from consumer.cli.adapter_bench import print_adapter_summary, run_adapter_benchmark
    from consumer.cli.local_services import LOCAL_S3, ServiceError

    settings = configured(args, **LOCAL_S3)
    try:
        summary = run_adapter_benchmark(settings.pipeline, rank=args.rank, repeats=args.repeats)
    except (ServiceError, ModelLoadError) as exc:
        raise CommandFailed(str(exc), EXIT_FAILED) from exc
    print_adapter_summary(summary)
    return 0


def _quality(args: argparse.Namespace) -> int:
    from pipeline.tools.quality import load_cases, print_quality_summary, run_quality_benchmark

    settings = configured(args, **NO_S3)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        cases = load_cases(Path(args.images), Path(args.prompts), seeds, args.size)
        summary = run_quality_benchmark(
            settings.pipeline,
            [name for name in args.option_sets.split(",") if name.strip()],
            cases,
            steps=args.steps,
            guidance=args.guidance,
            max_lpips=args.max_lpips,
        )
    except ImportError as exc:
        raise CommandFailed(
            f"needs scikit-image for PSNR and SSIM: pip install 'klein-edit[quality]' ({exc})"
        ) from exc
    except (ValueError, OSError, ModelLoadError) as exc:
        raise CommandFailed(str(exc), EXIT_FAILED) from exc
    print_quality_summary(summary)
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from pipeline.tools.bench import main as pipeline_bench

    return pipeline_bench(list(args.passthrough), prog="klein-edit bench pipeline")

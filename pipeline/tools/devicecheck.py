"""One option set of the GPU device check, in its own process: each result one flushed JSON line.

`benchmarks/gpu_check.sh` runs this once per option set and call, each under its own `timeout`, so a
crash, a hang or a long compile loses only that option set, and every figure measured before it is
already on disk. Lines go to `--out` (appended, flushed and fsynced as each result exists) and stdout.

Option sets (`OPTION_SETS`): `bf16`; `float8` (torchao float8 transformer); `float8+compile` (plus the
regional compile and `attention=auto`: every installed backend checked against SDPA on one block, the
fastest that passes used; the build line lists the trials); `24gb` (float8 transformer and text
encoder, under a 22 GB per-process memory fraction set after placement, the budget of a 24 GB card).

Call 1 (correctness): memory growth over 20 distinct prompts (`memory_allocated` after each edit must
stay flat), OOM recovery (a forced out-of-memory error is `GpuOutOfMemory`; the next edit gives the same
bytes as before it) and determinism (the same seed twice gives identical bytes).
Call 2 (speed): the production warm-up, then per reference count (0, 1, 4) ms per transformer pass and
the peak allocated and reserved memory since placement; recompiles after warm-up; then the OOM and
determinism checks once more, on the warmed editor.

`--dry-run`: the same steps on the tiny model on the CPU (the harness cannot rot): float8 and the memory
fraction need CUDA and are reported as skipped; compile uses dynamo's eager backend through the same
counting backend; the OOM is forced by a hook on the transformer instead of filling the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch
from PIL import Image

from pipeline.attention import select_attention
from pipeline.config import TINY_RANDOM, PipelineSettings
from pipeline.editor import EditJob, KleinEditor
from pipeline.errors import GpuOutOfMemory
from pipeline.optimize import CompileCounter, apply_options, compile_transformer
from pipeline.tools.bench import PassTimer, build_random_pipeline, parse_option_set

OPTION_SETS: dict[str, str] = {
    "bf16": "bf16",
    "float8": "float8",
    "float8+compile": "float8+compile",
    "24gb": "float8+te-float8",
}
MEMORY_FRACTION_BYTES = {"24gb": 22 * 10**9}
# The fastest exact set: the attention backend is chosen at start-up (`pipeline.attention`, auto).
AUTO_ATTENTION = {"float8+compile"}
GROWTH_PROMPTS = 20
GROWTH_TOLERANCE_BYTES = 64 * 2**20  # allocator rounding; a leak of one 9B embedding per edit is 12.6 MB x 20
REFERENCE_COUNTS = (0, 1, 4)


class Results:
    """Appends one JSON object per line to a file and stdout, flushed (and fsynced) at once."""

    def __init__(self, path: Path | None, common: dict[str, Any]) -> None:
        self._common = common
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path is not None else None
        self.failures = 0

    def emit(self, step: str, **fields: Any) -> None:
        record = {**self._common, "step": step, **fields, "time": round(time.time(), 3)}
        if record.get("ok") is False:
            self.failures += 1
        line = json.dumps(record, default=str)
        print(line, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@contextmanager
def guarded(results: Results, step: str) -> Iterator[None]:
    """Run one step; an exception becomes that step's `ok: false` line and the next step still runs."""
    try:
        yield
    except Exception as exc:
        results.emit(
            step,
            ok=False,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=traceback.format_exc(limit=8)[-4000:],
        )


def _image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


class Case:
    """One option set built and placed, its editor, and the sizes this scale uses."""

    def __init__(self, option_set: str, *, dry_run: bool, results: Results) -> None:
        self.option_set = option_set
        self.dry_run = dry_run
        self.results = results
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.size = 64 if dry_run else 1024  # call 2's output side, and each reference's
        self.small = 64 if dry_run else 256  # call 1's edits: correctness, not speed
        self.skipped: list[str] = []
        base = PipelineSettings(
            model=TINY_RANDOM if dry_run else "random-9b",
            device=self.device.type,
            warmup_sizes=[(self.size, self.size)],
        )
        settings = parse_option_set(OPTION_SETS[option_set], base)
        if option_set in AUTO_ATTENTION:
            settings = settings.model_copy(update={"attention": "auto"})
        if dry_run and (settings.quantize_float8 or settings.text_encoder_placement == "float8"):
            self.skipped.append("float8 needs CUDA (compute capability 8.9+)")
            settings = settings.model_copy(update={"quantize_float8": False, "text_encoder_placement": "gpu"})
        if dry_run and option_set in MEMORY_FRACTION_BYTES:
            self.skipped.append("the memory fraction needs CUDA")
        self.settings = settings
        self.counter = CompileCounter("eager" if dry_run else "inductor")
        dtype = torch.float32 if dry_run else torch.bfloat16
        start = time.perf_counter()
        pipe = build_random_pipeline(real_dims=not dry_run, device=self.device, dtype=dtype)
        # As KleinEditor.load orders it: weights quantized, then the attention check, then compile.
        applied = apply_options(pipe, settings.model_copy(update={"compile": False}))
        attention, trials = select_attention(
            pipe.transformer, settings.attention, tolerance=settings.attention_tolerance
        )
        if settings.compile:
            compile_transformer(pipe.transformer, self.counter)
            applied.append("compile")
        self.pipe = pipe
        self.editor = KleinEditor(
            pipe, settings, base.model, compile_counter=self.counter, attention_backend=attention
        )
        self.attention_trials = [trial.describe() for trial in trials]
        fraction = None
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            limit = MEMORY_FRACTION_BYTES.get(option_set)
            if limit is not None:
                fraction = limit / torch.cuda.get_device_properties(self.device).total_memory
                torch.cuda.set_per_process_memory_fraction(fraction, self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        results.emit(
            "build",
            ok=True,
            options_applied=applied,
            attention=attention,
            attention_trials=self.attention_trials,
            skipped=self.skipped,
            build_s=round(time.perf_counter() - start, 3),
            memory_fraction=fraction,
            **self.memory(),
        )

    def memory(self) -> dict[str, int]:
        if self.device.type != "cuda":
            return {"allocated_bytes": 0, "peak_allocated_bytes": 0, "peak_reserved_bytes": 0}
        return {
            "allocated_bytes": torch.cuda.memory_allocated(self.device),
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
        }

    def job(self, *, side: int, references: int, steps: int, prompt: str, seed: int = 0) -> EditJob:
        images = [_image(side, side, index) for index in range(1 + references)]
        return EditJob(
            images=images,
            prompt=prompt,
            num_inference_steps=steps,
            guidance_scale=4.0,
            seed=seed,
            width=side,
            height=side,
        )


def memory_growth(case: Case) -> None:
    """20 distinct prompts: GPU memory after each edit stays flat (cached embeddings live on the host)."""
    allocated: list[int] = []
    for index in range(GROWTH_PROMPTS):
        prompt = f"make the sky colour number {index} and keep the rest unchanged"
        case.editor.edit(case.job(side=case.small, references=1, steps=1, prompt=prompt))
        allocated.append(case.memory()["allocated_bytes"])
    growth = max(allocated[1:]) - allocated[1] if len(allocated) > 1 else 0
    on_device = [t.device.type for t in case.editor.cached_embeddings() if t.device.type != "cpu"]
    case.results.emit(
        "memory_growth",
        ok=growth <= GROWTH_TOLERANCE_BYTES and case.editor.prompt_cache_len() == GROWTH_PROMPTS,
        prompts=GROWTH_PROMPTS,
        allocated_bytes=allocated,
        growth_bytes=growth,
        tolerance_bytes=GROWTH_TOLERANCE_BYTES,
        prompt_cache_len=case.editor.prompt_cache_len(),
        cached_on_device=len(on_device),
    )


@contextmanager
def forced_out_of_memory(case: Case) -> Iterator[None]:
    """Make the next edit run out of memory: fill the GPU (real), or raise from a hook (dry run)."""
    if case.device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        ballast: list[torch.Tensor] = []
        chunk = 2**30
        try:
            # Largest chunks first, halving down to 1 MiB: what is left cannot hold any edit's activations.
            while chunk >= 2**20:
                try:
                    ballast.append(torch.empty(chunk, dtype=torch.uint8, device=case.device))
                except torch.OutOfMemoryError:
                    chunk //= 2
            yield
        finally:
            ballast.clear()
            torch.cuda.empty_cache()
        return

    def raise_oom(_module: Any, _args: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (forced by the check)")

    handle = case.pipe.transformer.register_forward_pre_hook(raise_oom)
    try:
        yield
    finally:
        handle.remove()


def oom_recovery(case: Case, side: int) -> None:
    """A forced OOM is GpuOutOfMemory (retryable); the next edit succeeds with the same bytes as before."""
    job = case.job(side=side, references=1, steps=1, prompt="recolour the jacket red", seed=11)
    before = _digest(case.editor.edit(job).image)
    error: str | None = None
    with forced_out_of_memory(case):
        try:
            case.editor.edit(job)
        except GpuOutOfMemory as exc:
            error = exc.code.value
    after = _digest(case.editor.edit(job).image)
    case.results.emit(
        "oom_recovery",
        ok=error is not None and after == before,
        error_code=error,
        identical=after == before,
        **case.memory(),
    )


def determinism(case: Case, side: int) -> None:
    job = case.job(side=side, references=1, steps=2, prompt="make the car yellow", seed=1234)
    first = _digest(case.editor.edit(job).image)
    second = _digest(case.editor.edit(job).image)
    case.results.emit("determinism", ok=first == second, sha256=[first, second])


def speed(case: Case) -> None:
    """Production warm-up, then per reference count: one untimed edit, one timed 2-step edit."""
    start = time.perf_counter()
    case.editor.warm_up()
    case.results.emit(
        "warm_up",
        ok=True,
        seconds=round(time.perf_counter() - start, 3),
        compilations=case.editor.compilations,
    )
    timer = PassTimer(case.pipe.transformer, case.device)
    try:
        for references in REFERENCE_COUNTS:
            with guarded(case.results, f"passes_{references}_references"):
                job = case.job(side=case.size, references=references, steps=2, prompt="make the sky purple")
                case.editor.edit(replace_steps(job, 1))
                if case.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(case.device)
                timer.reset()
                output = case.editor.edit(job)
                passes = timer.milliseconds()
                case.results.emit(
                    f"passes_{references}_references",
                    ok=True,
                    references=references,
                    width=case.size,
                    height=case.size,
                    transformer_passes=len(passes),
                    ms_per_pass=[round(ms, 3) for ms in passes],
                    ms_per_pass_median=round(statistics.median(passes), 3) if passes else None,
                    edit_ms=round(output.inference_ms, 3),
                    **case.memory(),
                )
    finally:
        timer.close()
    case.results.emit(
        "recompiles",
        ok=case.editor.recompiles_after_ready == 0,
        recompiles_after_ready=case.editor.recompiles_after_ready,
        compilations=case.editor.compilations,
        compiled=case.settings.compile,
    )


def replace_steps(job: EditJob, steps: int) -> EditJob:
    return dataclasses.replace(job, num_inference_steps=steps)


def run(option_set: str, *, call: int, dry_run: bool, out: Path | None) -> int:
    results = Results(out, {"call": call, "option_set": option_set, "dry_run": dry_run})
    try:
        if not dry_run and not torch.cuda.is_available():
            results.emit("build", ok=False, error="no CUDA device visible; use --dry-run on the CPU")
            return 1
        case: Case | None = None
        with guarded(results, "build"):
            case = Case(option_set, dry_run=dry_run, results=results)
        if case is None:
            return 1
        if call == 1:
            with guarded(results, "memory_growth"):
                memory_growth(case)
            with guarded(results, "oom_recovery"):
                oom_recovery(case, case.small)
            with guarded(results, "determinism"):
                determinism(case, case.small)
        else:
            with guarded(results, "speed"):
                speed(case)
            with guarded(results, "oom_recovery"):
                oom_recovery(case, case.size)
            with guarded(results, "determinism"):
                determinism(case, case.size)
        results.emit("done", ok=results.failures == 0, failures=results.failures, **case.memory())
        return 0 if results.failures == 0 else 1
    finally:
        results.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--option-set", choices=sorted(OPTION_SETS), required=True)
    parser.add_argument("--call", type=int, choices=[1, 2], required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    args = parser.parse_args(argv)
    if args.dry_run:
        torch.set_num_threads(1)  # a shared CI core: more threads only contend
    return run(args.option_set, call=args.call, dry_run=args.dry_run, out=args.out)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The device check: prove the worker's own model path on a CUDA GPU (an H200) and take its figures, in
# two calls of under 8 minutes each. Every step runs under its own `timeout`; every result is one JSON
# line appended (and flushed) to $OUT/results.jsonl the moment it exists, so a timeout or a crash still
# returns everything measured before it. Each option set runs in its own process.
#
#   benchmarks/gpu_check.sh wheels            # HERE, no GPU: .whl/ for the device, installed + imported
#                                             #   with Python 3.12 (see docs/benchmarks.md)
#   benchmarks/gpu_check.sh call1 [--dry-run] # device: import smoke, `gpu` tests, per option set:
#                                             #   memory growth, OOM recovery, determinism
#   benchmarks/gpu_check.sh call2 [--dry-run] # device: per option set: ms per pass at 0/1/4 references,
#                                             #   peak memory after placement, recompiles, OOM, determinism
#
# --dry-run: the same steps with the tiny model on the CPU, in the current Python environment (the test
# suite runs it: tests/test_gpu_check.py). Option sets: bf16, float8, 24gb (float8 transformer and text
# encoder under a 22 GB memory fraction), float8+compile (last: its compile may take minutes).
# Environment: OUT (default bench-out), KLEIN_EDIT_CHECK_PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

usage() {
    sed -n '2,17p' "$0" >&2
    exit 2
}

command=${1:-}
dry_run=0
if [ "${2:-}" = "--dry-run" ]; then
    dry_run=1
elif [ -n "${2:-}" ]; then
    usage
fi
out=${OUT:-bench-out}
mkdir -p "$out"
results="$out/results.jsonl"
py=${KLEIN_EDIT_CHECK_PYTHON:-python3}
site=${KLEIN_EDIT_CHECK_SITE:-/tmp/klein-edit-site}
failures=0

# One JSON line for a step: its name, whether it passed, its exit status and seconds.
record() {
    local name=$1 rc=$2 seconds=$3 ok=false timed_out=false
    [ "$rc" -eq 0 ] && ok=true
    { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && timed_out=true
    [ "$rc" -eq 0 ] || failures=$((failures + 1))
    printf '{"call": "%s", "step": "%s", "ok": %s, "rc": %d, "timed_out": %s, "seconds": %d, "dry_run": %s, "log": "%s"}\n' \
        "$command" "$name" "$ok" "$rc" "$timed_out" "$seconds" "$([ "$dry_run" -eq 1 ] && echo true || echo false)" \
        "$name.log" | tee -a "$results"
}

# step NAME SECONDS COMMAND...: run COMMAND under `timeout`, its output in $out/NAME.log.
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "==> $name (limit ${limit}s)" >&2
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    record "$name" "$rc" $((SECONDS - start))
}

# The carried wheels (see `wheels`) go into a clean target directory, first on the path.
install_wheels() {
    export PYTHONPATH=$PWD
    if [ "$dry_run" -eq 1 ] || ! compgen -G ".whl/*.whl" >/dev/null; then
        return 0
    fi
    rm -rf "$site"
    step install-wheels 45 "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD"
}

device_info='
import json, torch
info = {"step": "device", "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
if torch.cuda.is_available():
    info["memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
try:
    import diffusers
    info["diffusers"] = diffusers.__version__
except ImportError as exc:
    info["diffusers"] = f"missing: {exc}"
print(json.dumps(info), flush=True)
'

# option_set NAME SECONDS: one option set of this call, in its own process.
option_set() {
    local name=$1 limit=$2 args=(--option-set "$1" --call "${command#call}" --out "$results")
    [ "$dry_run" -eq 1 ] && args+=(--dry-run)
    step "${command}-${name}" "$limit" "$py" -m pipeline.tools.devicecheck "${args[@]}"
}

case "$command" in
    wheels)
        # Runs on the developer machine: resolve and download .whl/ for cp312 manylinux x86-64, install
        # it with Python 3.12 into a clean target, import every package with it.
        py312=${KLEIN_EDIT_PYTHON312:-$(command -v python3.12 || true)}
        step wheelset 300 "$py" -m benchmarks.wheelset --dest .whl
        if [ -z "$py312" ] || ! "$py312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "no Python 3.12 here: checking that the wheel set resolves for 3.12 instead" >&2
            step wheels-resolve 300 "$py" -m pip install -q --dry-run --ignore-installed --no-index \
                --find-links .whl --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
                --platform manylinux2014_x86_64 --target "$out/resolve-target" -r .whl/wheels.txt
        else
            scratch=$(mktemp -d)
            # Stand-ins for the device's own packages except torch and the models' libraries (not carried;
            # they only let more of the project import here).
            step baseline-standin 300 "$py" -m pip download -q --only-binary=:all: --python-version 3.12 \
                --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
                --platform manylinux2014_x86_64 -d "$scratch/standin" \
                packaging urllib3 idna certifi charset-normalizer pyyaml numpy pillow aiohttp \
                prometheus-client requests filelock fsspec jinja2 regex tqdm huggingface_hub safetensors
            step wheels-install 120 "$py312" -m pip install -q --no-index --no-deps --no-compile \
                --target "$scratch/site" .whl/*.whl
            step standin-install 120 "$py312" -m pip install -q --no-index --no-deps --no-compile \
                --target "$scratch/standin-site" "$scratch"/standin/*.whl
            PYTHONPATH="$scratch/standin-site" step import-check-py312 120 "$py312" -m benchmarks.import_check \
                --target "$scratch/site"
            tail -n 1 "$out/import-check-py312.log" >>"$results"
            rm -rf "$scratch"
        fi
        ;;
    call1)
        install_wheels
        step device 20 "$py" -c "$device_info"
        tail -n 1 "$out/device.log" >>"$results"
        step import-smoke 40 "$py" -m benchmarks.import_check --target "$site" --strict
        tail -n 1 "$out/import-smoke.log" >>"$results"
        step pytest-gpu 75 "$py" -m pytest -m gpu tests/pipeline -q -p no:cacheprovider
        option_set bf16 55
        option_set float8 55
        option_set 24gb 55
        option_set float8+compile 135
        ;;
    call2)
        install_wheels
        step device 20 "$py" -c "$device_info"
        tail -n 1 "$out/device.log" >>"$results"
        option_set bf16 75
        option_set float8 75
        option_set 24gb 75
        option_set float8+compile 190
        ;;
    *)
        usage
        ;;
esac
echo "==> $command: $failures step(s) failed; results in $results" >&2
[ "$failures" -eq 0 ]

#!/usr/bin/env bash
# The one device check for a GPU machine (H100/H200): prove the real-size path on CUDA and take the
# pipeline figures recorded in docs/benchmarks.md. Run from the repository root on a machine where
# torch with CUDA is installed; diffusers, torchao and the project's other dependencies come from
# pre-downloaded wheels in .whl/ when the machine cannot reach PyPI (see the device tool's notes):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl \
#       diffusers==0.42.1 torchao pydantic pydantic-settings structlog ...
#   benchmarks/gpu_check.sh            # writes logs under ${OUT:-bench-out}/
set -uo pipefail
out=${OUT:-bench-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)' | tee -a "$out/gpu.txt"
# 1. The CUDA tests of the pipeline package (OOM mapping, device placement, options).
python3 -m pytest -m gpu tests/pipeline -q -p no:cacheprovider 2>&1 | tee "$out/pytest-gpu.log"
# 2. The real 9B dimensions: 4 timed steps per option set, 1024x1024 output with one 1024x1024 image.
python3 -m pipeline.bench --real-dims --steps 4 --width 1024 --height 1024 --references 0 \
    --option-sets bf16,float8,compile,float8+compile,te-offload+float8+compile 2>&1 | tee "$out/pipeline-9b.log"

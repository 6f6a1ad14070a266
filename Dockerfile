# syntax=docker/dockerfile:1.7
#
# klein-edit GPU worker image.
#
#   docker build -t klein-edit:0.1.0 .
#   docker run --gpus all -v klein-models:/models -e HF_TOKEN klein-edit:0.1.0 fetch-model
#   docker run --gpus all -v klein-models:/models -e KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS=... klein-edit:0.1.0
#
# Base image choice: python:3.11-slim plus the CUDA 12.8 builds of torch from the PyTorch index,
# not nvidia/cuda. The cu128 torch wheels depend on the nvidia-*-cu12 wheels (cuBLAS, cuDNN, NCCL,
# the CUDA runtime, nvrtc, ...), so the CUDA user-space libraries come from pip, pinned by the torch
# version, and a CUDA base image would ship a second, unused copy (~3 GB). The driver (libcuda) is
# mounted at run time by the NVIDIA container toolkit / device plugin; the host needs a driver that
# supports CUDA 12.8 (>= 570). Pin the base by digest in your registry mirror for full reproducibility.
#
# No weights are baked in: the Hugging Face cache lives on a volume at /models (HF_HOME), filled by
# `klein-edit fetch-model` (the Helm chart runs it as an init container) or pre-provisioned.
# The image runs as uid/gid 10001 and works with a read-only root filesystem as long as /tmp and
# /models are writable mounts (the chart mounts an emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The versions the project is tested with (resolved in its development environment). torch and its
# own dependencies (triton, the nvidia-* CUDA wheels) are pinned exactly by torch==2.13.0 itself.
COPY <<EOF /tmp/constraints.txt
torch==2.13.0
torchao==0.18.0
diffusers==0.42.1
peft==0.21.2
transformers==5.24.0
tokenizers==0.23.3
accelerate==1.15.0
safetensors==0.8.0
huggingface-hub==2.4.0
hf-xet==1.8.0
numpy==2.4.6
pillow==13.0.0
pillow-heif==1.8.1
scikit-image==0.26.0
scipy==1.17.1
networkx==3.6.1
imageio==2.38.2
tifffile==2026.3.3
lazy-loader==0.6
aiokafka==0.14.0
cramjam==2.14.0
async-timeout==5.0.1
boto3==1.44.8
botocore==1.44.8
s3transfer==0.19.3
jmespath==1.1.0
python-dateutil==2.9.0.post0
urllib3==2.8.0
pydantic==2.14.4
pydantic-core==2.50.5
pydantic-settings==2.16.3
python-dotenv==1.2.4
structlog==26.1.0
prometheus-client==0.26.0
aiohttp==3.14.5
aiohappyeyeballs==2.7.1
aiosignal==1.4.0
attrs==26.1.0
frozenlist==1.8.0
multidict==7.2.1
propcache==0.5.4
yarl==1.25.1
idna==3.20
requests==2.34.2
certifi==2026.10.19.post1
regex==2026.11.19
pyyaml==6.0.4
tqdm==4.70.1
psutil==7.2.2
aws-msk-iam-sasl-signer-python==1.0.2
click==8.5.1
c2pa-python==0.38.1
cryptography==50.0.2
cffi==2.1.1
pycparser==3.12
toml==0.10.2
EOF

# 1) The CUDA build of torch, from the PyTorch index (cu128: CUDA 12.8 user-space libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# The PyTorch index hosts torch's dependencies too; no second index (no dependency confusion).
RUN pip install --index-url "${TORCH_INDEX_URL}" -c /tmp/constraints.txt torch==2.13.0

# 2) The project and the rest of its dependencies (torch is already satisfied), plus torchao for
#    the float8 transformer (pipeline.quantize_float8). Sources only: see .dockerignore.
WORKDIR /src
# README.m[d]: copied when present (pyproject's `readme`), no error when it is not.
COPY pyproject.toml README.m[d] ./
COPY schemas ./schemas
COPY storage ./storage
COPY pipeline ./pipeline
COPY consumer ./consumer
RUN pip install -c /tmp/constraints.txt . torchao==0.18.0 \
    && pip check \
    && python -c "import consumer.cli, pipeline, storage, schemas"

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# gcc + libc6-dev: Triton (torch.compile's GPU backend) compiles a small C launcher stub at run time
# and fails without a C compiler. Python headers are already in the python image. Nothing else.
# gcc is pinned to bookworm's only version. libc6-dev is not: it must equal the libc6 of the base image
# (Debian security updates move both), and an exact pin breaks the build as soon as the archive drops
# the superseded version; pinning the base image by digest is what fixes libc6, and libc6-dev with it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 klein \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin klein \
    && mkdir -p /models \
    && chown 10001:10001 /models

COPY --from=build /opt/venv /opt/venv

# MALLOC_ARENA_MAX=2: glibc's per-thread malloc arenas let the I/O threads' image buffers fragment host
# memory; two arenas halved peak RSS under 24 MP JPEGs (docs/operations.md, Host memory).
ENV PATH=/opt/venv/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/models \
    KLEIN_EDIT_PIPELINE__CACHE_DIR=/models/hub \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torch-compile/inductor \
    TRITON_CACHE_DIR=/tmp/torch-compile/triton \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# NVIDIA_VISIBLE_DEVICES is deliberately not set: the device plugin (or `docker run --gpus`) picks the
# GPUs; a baked-in "all" would expose every GPU of the node to a pod that requested none.

# The Hugging Face cache: mount a volume here (weights are ~35 GB and never part of the image).
VOLUME ["/models"]

USER 10001:10001
WORKDIR /tmp

# /livez, /readyz, /metrics (KLEIN_EDIT_WORKER__HTTP_PORT).
EXPOSE 8080

# No HEALTHCHECK: Kubernetes probes /livez and /readyz (see helm/klein-edit). Model loading takes
# minutes, which a Docker HEALTHCHECK would have to special-case; outside Kubernetes use
# `curl localhost:8080/readyz` from the host.
ENTRYPOINT ["klein-edit"]
CMD ["worker"]

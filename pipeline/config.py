"""Pipeline settings: which model, where it runs and how. Composed into the worker's `Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

TINY_RANDOM = "tiny-random"
DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-base-9B"


class PipelineSettings(BaseModel):
    model: str = Field(
        default=DEFAULT_MODEL,
        description="A Hugging Face Hub id (loaded from the local cache), a local directory, or "
        "'tiny-random' (an offline random-weight pipeline of the same classes, for demos and tests).",
    )
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on the CPU."
    )
    cache_dir: str | None = Field(default=None, description="Hugging Face cache directory (HF_HOME/hub).")
    hf_token: SecretStr | None = Field(default=None, description="Used by fetch-model for gated downloads.")
    max_megapixels: float = Field(default=1.05, gt=0, description="Default output size is capped at this.")
    max_input_pixels: int = Field(default=40_000_000, ge=1, description="Decoded pixels allowed per input.")
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP", "HEIF", "AVIF"],
        description="Input formats (Pillow ids; JPG and HEIC are accepted as aliases).",
    )
    max_references: int = Field(default=4, ge=0, le=16)
    max_sequence_length: int = Field(default=512, ge=64, le=512)
    prompt_cache_size: int = Field(default=256, ge=0, description="LRU of prompt embeddings; 0 disables.")
    text_encoder_placement: Literal["gpu", "cpu_offload", "float8"] = "gpu"
    quantize_float8: bool = Field(default=False, description="torchao float8 (dynamic, per-row) transformer.")
    compile: bool = Field(default=False, description="Regional torch.compile of the transformer blocks.")
    warmup_sizes: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1024, 1024)], description="(width, height) buckets warmed before ready."
    )
    warmup: bool = Field(default=True, description="Run one short edit before reporting ready.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; None keeps the default.")

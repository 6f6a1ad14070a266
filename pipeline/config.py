"""Pipeline settings: which model, where it runs and how. Composed into the worker's `Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

TINY_RANDOM = "tiny-random"
# The text encoder's token limit as Flux2KleinPipeline uses it: every prompt, rendered with the chat
# template, is padded to exactly this many tokens, and the transformer was trained on that length.
MAX_SEQUENCE_LENGTH: Literal[512] = 512
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
        default="auto",
        description="auto: bfloat16 on CUDA, float32 on the CPU. float16 is refused at start-up: FLUX.2 "
        "activations overflow it (NaN, black images).",
    )
    cache_dir: str | None = Field(default=None, description="Hugging Face cache directory (HF_HOME/hub).")
    hf_token: SecretStr | None = Field(default=None, description="Used by fetch-model for gated downloads.")
    max_megapixels: float = Field(
        default=1.048576,
        gt=0,
        description="Megapixels: the default output size (the base image's aspect ratio) is capped at this. "
        "The default, 1024x1024, is also the pipeline's conditioning area, so the base image is conditioned "
        "at exactly the output size.",
    )
    max_output_megapixels: float = Field(
        default=4.0,
        gt=0,
        description="Megapixels: a request's width x height above this is rejected (INVALID_EVENT) before "
        "any GPU work. Past about 4 MP the scheduler's resolution shift makes the run nearly one step.",
    )
    vae_tiling_megapixels: float = Field(
        default=2.0,
        gt=0,
        description="Megapixels: outputs larger than this are decoded by the VAE in tiles (less memory).",
    )
    max_input_pixels: int = Field(default=40_000_000, ge=1, description="Decoded pixels allowed per input.")
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP", "HEIF", "AVIF"],
        description="Input formats (Pillow ids; JPG and HEIC are accepted as aliases).",
    )
    max_references: int = Field(default=4, ge=0, le=16)
    # An int pinned by bounds, not Literal[512]: a Literal does not accept the environment's "512".
    max_sequence_length: int = Field(
        default=MAX_SEQUENCE_LENGTH,
        ge=MAX_SEQUENCE_LENGTH,
        le=MAX_SEQUENCE_LENGTH,
        description="Fixed at the model's 512 tokens; longer prompts are rejected (INVALID_EVENT).",
    )
    prompt_cache_size: int = Field(default=256, ge=0, description="LRU of prompt embeddings; 0 disables.")
    text_encoder_placement: Literal["gpu", "cpu_offload", "float8"] = "gpu"
    quantize_float8: bool = Field(default=False, description="torchao float8 (dynamic, per-row) transformer.")
    compile: bool = Field(default=False, description="Regional torch.compile of the transformer blocks.")
    warmup_sizes: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1024, 1024)], description="(width, height) buckets warmed before ready."
    )
    warmup: bool = Field(default=True, description="Run one short edit before reporting ready.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; None keeps the default.")

    @field_validator("dtype")
    @classmethod
    def _refuse_float16(cls, value: str) -> str:
        if value == "float16":
            raise ValueError(
                "float16 is not supported: FLUX.2 activations overflow float16 (NaN, black images); "
                "use bfloat16 or auto"
            )
        return value

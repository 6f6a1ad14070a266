"""Pipeline settings: which model, where it runs and how. Composed into the worker's `Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

TINY_RANDOM = "tiny-random"
# The text encoder's token limit as Flux2KleinPipeline uses it: every prompt, rendered with the chat
# template, is padded to exactly this many tokens, and the transformer was trained on that length.
MAX_SEQUENCE_LENGTH: Literal[512] = 512
DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-base-9B"
MAX_ADAPTERS_HARD = 8  # schemas.requests.MAX_ADAPTERS_HARD: what one record may list at all


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
    attention: Literal["native", "auto", "cudnn", "flash3", "sage"] = Field(
        default="native",
        description="Attention kernel (diffusers' dispatcher): native (torch SDPA, the reference), cudnn, "
        "flash3 (FlashAttention-3), sage (SageAttention), each where installed and passing a numerical "
        "check against SDPA at start-up; auto picks the fastest that passes (pipeline/attention.py).",
    )
    attention_tolerance: float = Field(
        default=0.02,
        gt=0,
        description="Attention check bound: max |block output - SDPA's| <= this x max(1, max |SDPA's|).",
    )
    step_cache: Literal["off", "dbcache"] = Field(
        default="off",
        description="Skip transformer blocks on steps whose residual barely changes: cache-dit DBCache, one "
        "cache per CFG branch (pipeline/passes.py). Changes the output; judge it with `klein-edit bench "
        "quality` first. Requests cannot turn it on.",
    )
    step_cache_threshold: float = Field(
        default=0.08, gt=0, description="DBCache residual_diff_threshold: higher skips more (and costs more)."
    )
    step_cache_front_blocks: int = Field(default=8, ge=1, description="DBCache Fn: first blocks always run.")
    step_cache_back_blocks: int = Field(default=0, ge=0, description="DBCache Bn: last blocks always run.")
    step_cache_warmup_steps: int = Field(
        default=8, ge=0, description="DBCache: steps never cached at the start."
    )
    step_cache_max_continuous: int = Field(
        default=-1, ge=-1, description="DBCache: most consecutive cached steps per branch (-1: no limit)."
    )
    guidance_interval: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="[start, end) fractions of the schedule on which the unconditional pass runs (step i of "
        "n when start <= i/n < end); elsewhere the step uses the conditional prediction alone. Default: all.",
    )
    max_images: int = Field(
        default=4, ge=1, le=4, description="Most images one request may ask for (`num_images`)."
    )
    acceleration_tiers: dict[Literal["regular", "high"], tuple[float, float]] = Field(
        default_factory=dict,
        description="Speed tiers a request may choose (`acceleration`), each a guidance interval "
        "[start, end) applied to that request alone (switching never recompiles or reloads). Unlisted tiers "
        "are refused. "
        'E.g. {"regular": [0.0, 0.6], "high": [0.0, 0.4]}. The step cache cannot be switched per request, '
        "so it is not a tier.",
    )
    default_acceleration: Literal["none", "regular", "high"] = Field(
        default="none", description="The tier of a request that names none (it must be listed, unless none)."
    )
    warmup_sizes: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1024, 1024)], description="(width, height) buckets warmed before ready."
    )
    warmup: bool = Field(default=True, description="Run one short edit before reporting ready.")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads; None keeps the default.")
    max_adapters: int = Field(
        default=3,
        ge=0,
        le=MAX_ADAPTERS_HARD,
        description="LoRA adapters one request may list (`loras`); 0 turns adapters off. Must be 0 with "
        "quantize_float8 (refused at start-up). With compile, this many fixed adapter slots are compiled in.",
    )
    max_adapter_rank: int = Field(
        default=128,
        ge=1,
        description="Highest LoRA rank accepted; a higher one fails with INVALID_ADAPTER. With compile, the "
        "rank of every adapter slot: each edit computes max_adapters slots of this rank on every block "
        "layer, so keep it low (32-64) there.",
    )
    adapter_cache_bytes: int = Field(
        default=4 * 1024**3,
        ge=0,
        description="Bytes of host memory for checked adapters (an LRU keyed by content hash); 0 keeps none.",
    )
    resident_adapters: int = Field(
        default=6,
        ge=1,
        description="Adapters kept loaded in the transformer between edits (least recently used unloaded "
        "first); each costs GPU memory (about rank x 2 x hidden x adapted layers x 2 bytes).",
    )

    @field_validator("guidance_interval")
    @classmethod
    def _interval_within_schedule(cls, value: tuple[float, float]) -> tuple[float, float]:
        start, end = value
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= start < end <= 1, got {value}")
        return value

    @field_validator("acceleration_tiers")
    @classmethod
    def _tiers_within_schedule(
        cls, value: dict[Literal["regular", "high"], tuple[float, float]]
    ) -> dict[Literal["regular", "high"], tuple[float, float]]:
        for tier, (start, end) in value.items():
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(
                    f"acceleration_tiers.{tier} must satisfy 0 <= start < end <= 1, got {(start, end)}"
                )
        return value

    @field_validator("dtype")
    @classmethod
    def _refuse_float16(cls, value: str) -> str:
        if value == "float16":
            raise ValueError(
                "float16 is not supported: FLUX.2 activations overflow float16 (NaN, black images); "
                "use bfloat16 or auto"
            )
        return value

    @model_validator(mode="after")
    def _default_tier_is_listed(self) -> PipelineSettings:
        if self.default_acceleration != "none" and self.default_acceleration not in self.acceleration_tiers:
            raise ValueError(
                f"default_acceleration {self.default_acceleration!r} is not in acceleration_tiers "
                f"({sorted(self.acceleration_tiers) or 'none listed'})"
            )
        if self.acceleration_tiers and self.step_cache != "off":
            raise ValueError(
                "acceleration_tiers cannot be combined with step_cache: cache-dit keeps the CFG branches "
                "apart by the parity of transformer calls, which a tier's guidance interval changes"
            )
        return self

    @model_validator(mode="after")
    def _resident_adapters_hold_one_request(self) -> PipelineSettings:
        if self.resident_adapters < self.max_adapters:
            raise ValueError(
                f"resident_adapters ({self.resident_adapters}) must be at least max_adapters "
                f"({self.max_adapters}): one request's adapters are loaded together"
            )
        return self


def adapters_refusal(settings: PipelineSettings) -> str | None:
    """Why this worker cannot serve LoRA adapters with these options, or None when it can.

    float8: peft's LoRA layers would wrap torchao's quantized Linear layers; whether that is numerically
    right (and fast) has not been measured on a GPU, so the combination is refused rather than guessed.
    (compile is served with fixed adapter slots, `pipeline.adapters.AdapterSlots`.)
    """
    if settings.max_adapters == 0 or not settings.quantize_float8:
        return None
    return (
        f"LoRA adapters (max_adapters={settings.max_adapters}) cannot be combined with quantize_float8: set "
        "KLEIN_EDIT_PIPELINE__MAX_ADAPTERS=0 to run without adapters, or turn "
        "KLEIN_EDIT_PIPELINE__QUANTIZE_FLOAT8 off to serve requests with `loras`"
    )


SigningAlgorithm = Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"]


class ProvenanceSettings(BaseModel):
    """C2PA signing of outputs (docs/provenance.md). Off unless a key and its certificate chain are set,
    either inline (PEM text; the key is a secret) or as files (a mounted Kubernetes Secret)."""

    signing_key: SecretStr | None = Field(
        default=None, description="PEM private key (PKCS#8) that signs the C2PA manifests."
    )
    signing_key_file: Path | None = Field(default=None, description="File holding the PEM private key.")
    certificate_chain: str | None = Field(
        default=None,
        description="PEM certificates: the signing certificate first, then intermediates (root optional).",
    )
    certificate_chain_file: Path | None = Field(
        default=None, description="File holding the PEM certificate chain, signing certificate first."
    )
    signing_algorithm: SigningAlgorithm = Field(
        default="es256", description="Must match the key: es256 for an EC P-256 key, ps256 for RSA-PSS, ..."
    )
    timestamp_url: str | None = Field(
        default=None,
        description="RFC 3161 time-stamp authority; with one, signatures stay valid after the certificate "
        "expires.",
    )

    @model_validator(mode="after")
    def _key_and_chain_together(self) -> ProvenanceSettings:
        if self.signing_key is not None and self.signing_key_file is not None:
            raise ValueError("give signing_key or signing_key_file, not both")
        if self.certificate_chain is not None and self.certificate_chain_file is not None:
            raise ValueError("give certificate_chain or certificate_chain_file, not both")
        has_key = self.signing_key is not None or self.signing_key_file is not None
        has_chain = self.certificate_chain is not None or self.certificate_chain_file is not None
        if has_key != has_chain:
            raise ValueError(
                "C2PA signing needs both a signing key (signing_key or signing_key_file) and its "
                "certificate chain (certificate_chain or certificate_chain_file)"
            )
        return self

    @property
    def signing_enabled(self) -> bool:
        return self.signing_key is not None or self.signing_key_file is not None

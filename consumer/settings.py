"""The one `Settings` object: built once in the entry point from `KLEIN_EDIT_*` and passed down.

Nested fields use `__`, e.g. `KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS`; lists and whole sections are JSON.
Sources, strongest first: arguments of the entry point, the environment, a `.env` file, then a secrets
directory with one file per variable, named like it (a mounted Kubernetes Secret;
`/run/secrets/klein-edit` unless told otherwise). Nothing else in the code base reads `os.environ`;
each package owns the model of its own section (`S3Settings`, `PipelineSettings`).

A `KLEIN_EDIT_*` name that is not a setting is an error (a typo would otherwise fall back to a default
silently); so is a list that is not JSON. `load_settings` turns every configuration error into one
`ConfigurationError` whose lines each name the variable and the expected form.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from consumer.kafka.settings import KafkaSettings
from pipeline.config import PipelineSettings, ProvenanceSettings
from pipeline.moderation.settings import ModerationSettings
from schemas.results import DEFAULT_USD_PER_MEGAPIXEL
from storage.config import S3Settings, UrlInputSettings


class CostSettings(BaseModel):
    usd_per_megapixel: float = Field(default=DEFAULT_USD_PER_MEGAPIXEL, ge=0.0)
    bill_moderated_outputs: bool = Field(
        default=False,
        description="Bill an output withheld by moderation (OUTPUT_MODERATED) as if delivered: the GPU ran.",
    )


class ColorQaSettings(BaseModel):
    """Defaults and caps of the colour check (request `color_qa`)."""

    default_mode: Literal["off", "measure", "correct"] = Field(
        default="measure", description="The mode of a recolour whose request names none."
    )
    max_delta_e: float = Field(
        default=3.0,
        ge=0.5,
        le=20.0,
        description="Default tolerance, CIEDE2000 (2 strict, 3 usual, 5 lenient).",
    )
    k_l: float = Field(
        default=1.0, ge=0.5, le=4.0, description="CIEDE2000 lightness weight kL: 1, or 2 for textiles."
    )
    max_candidates: int = Field(default=4, ge=1, le=4, description="Cap of a request's color_qa.candidates.")
    on_fail: Literal["fail", "deliver"] = Field(default="deliver", description="Default color_qa.on_fail.")


class WorkerSettings(BaseModel):
    name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_in_flight: int = Field(
        default=4,
        ge=1,
        description="Requests picked up and not yet committed: one on the GPU, the others being fetched "
        "ahead or uploaded. Bounds memory (decoded images) and redelivery after a crash.",
    )
    max_attempts: int = Field(default=3, ge=1, description="Tries of a request before it is dead-lettered.")
    retry_backoff_s: float = Field(default=1.0, ge=0.0, description="First retry delay; doubles each time.")
    retry_backoff_max_s: float = Field(default=30.0, ge=0.0)
    drain_grace_s: float = Field(
        default=300.0,
        ge=0.0,
        description="Seconds: on SIGTERM, how long the in-flight edit may run on. The default covers the "
        "largest edit the limits allow (4 MP output, 4 references, 50 steps, CFG: ~220 s in bf16 eager on "
        "an H200; arithmetic in docs/operations.md).",
    )
    edit_timeout_s: float | None = Field(
        default=900.0,
        gt=0,
        description="Seconds: an edit running longer than this marks the worker not live (/livez 503), so a "
        "hung GPU is restarted by the orchestrator; None disables. 900 s is 4x the largest edit the limits "
        "allow (docs/operations.md).",
    )
    stuck_after_s: float = Field(
        default=900.0,
        gt=0,
        description="A record in flight longer than this (retries, a publish that never gets acked) is "
        "reported stuck: /readyz 503 and klein_edit_stuck_records (its partition cannot commit past it).",
    )
    reject_unknown_fields: bool = Field(
        default=False,
        description="Strict mode: a request with a field this worker does not know fails with "
        "INVALID_EVENT. Off: unknown fields are ignored and listed in the result's warnings (names "
        "close to a known field are rejected either way).",
    )
    max_edits: int = Field(
        default=0,
        ge=0,
        description="Recycle after this many records handled (0: never): the worker stops taking records, "
        "finishes and commits what it holds and exits with status 75 for the orchestrator to restart it.",
    )
    max_rss_mb: int = Field(
        default=0,
        ge=0,
        description="Recycle once the process's resident host memory exceeds this (MB; 0: never).",
    )
    max_gpu_reserved_mb: int = Field(
        default=0,
        ge=0,
        description="Recycle once the GPU memory the allocator reserves exceeds this (MB; 0: never).",
    )
    progress: bool = Field(default=False, description="Publish progress events for every request.")
    progress_interval_s: float = Field(default=1.0, gt=0.0)
    canceled_ids_capacity: int = Field(default=10_000, ge=1)
    http_port: int | None = Field(
        default=8080, description="Port of /livez, /readyz, /metrics; None disables."
    )
    http_host: str = "0.0.0.0"

    @field_validator("http_port", mode="before")
    @classmethod
    def _port_off(cls, value: object) -> object:
        # One env var can turn the endpoint off: KLEIN_EDIT_WORKER__HTTP_PORT=off (or none, null, "").
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none", "null"):
            return None
        return value


class LogSettings(BaseModel):
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: readable on a terminal, JSON otherwise."
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


ENV_PREFIX = "KLEIN_EDIT_"
DEFAULT_ENV_FILE = ".env"
DEFAULT_SECRETS_DIR = "/run/secrets/klein-edit"
# KLEIN_EDIT_* variables of the project's tooling, not of the worker: the test fixtures' endpoints
# (tests/conftest.py, .ci/run) and the set-up script's choices (scripts/dev).
TOOLING_VARIABLES = frozenset({"KLEIN_EDIT_VENV", "KLEIN_EDIT_TORCH", "KLEIN_EDIT_TORCH_INDEX"})
TOOLING_PREFIXES = ("KLEIN_EDIT_TEST_",)


class ConfigurationError(ValueError):
    """The configuration cannot be used. Each line of the message names one variable and what it
    expects, e.g. `KLEIN_EDIT_KAFKA__PRIORITY_TOPICS is not JSON: lists are JSON, e.g. '["a", "b"]'`."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        env_file=DEFAULT_ENV_FILE,
        secrets_dir=DEFAULT_SECRETS_DIR,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # No default instance: on AWS the bucket names are required (see S3Settings).
    s3: S3Settings = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    url_inputs: UrlInputSettings = Field(default_factory=UrlInputSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    color_qa: ColorQaSettings = Field(default_factory=ColorQaSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secrets = NestedSecretsSettingsSource(file_secret_settings, secrets_dir_missing="ok")
        secrets_dir = getattr(file_secret_settings, "secrets_dir", None) or DEFAULT_SECRETS_DIR
        return (
            init_settings,
            _CheckedSource(env_settings, "the environment"),
            _CheckedSource(dotenv_settings, "the .env file"),
            _CheckedSource(secrets, f"the secrets directory {secrets_dir}"),
        )


def load_settings(
    *, env_file: str | Path | None = None, secrets_dir: str | Path | None = None, **overrides: Any
) -> Settings:
    """`Settings` from the environment, the `.env` file and the secrets directory, with `overrides`
    (section -> {field: value}) on top.

    Raises `ConfigurationError` (one line per problem, each naming the variable) for a name that is not
    a setting, a list that is not JSON, a missing required value or a value out of range.
    """
    try:
        return Settings(
            _env_file=env_file if env_file is not None else DEFAULT_ENV_FILE,
            _secrets_dir=secrets_dir if secrets_dir is not None else DEFAULT_SECRETS_DIR,
            **overrides,
        )
    except ValidationError as exc:
        errors = exc.errors()
        buckets = [_variable(e) for e in errors if e["type"] == "missing" and _variable(e) in _BUCKETS]
        lines = [_describe(e) for e in errors if e["type"] != "missing" or _variable(e) not in _BUCKETS]
        if buckets:
            # Usually a new terminal without `dev up`'s exports: one line that says so, not one per bucket.
            lines.insert(
                0,
                f"{' and '.join(buckets)} {'is' if len(buckets) == 1 else 'are'} not set (required without "
                "KLEIN_EDIT_S3__ENDPOINT_URL, i.e. on AWS): for local services, paste the `export` lines "
                "that `klein-edit dev up` prints into this terminal; on AWS, set them to your buckets",
            )
        raise ConfigurationError("\n".join(lines)) from exc
    except SettingsError as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigurationError(f"{exc}{cause}") from exc


def known_variables() -> dict[str, FieldInfo]:
    """Every variable that is a setting, upper case, with its field (a section's own name included)."""
    known: dict[str, FieldInfo] = {}
    for section, info in Settings.model_fields.items():
        known[f"{ENV_PREFIX}{section}".upper()] = info
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for name, field in model.model_fields.items():
                known[f"{ENV_PREFIX}{section}__{name}".upper()] = field
    return known


def check_variables(variables: Mapping[str, str | None], origin: str) -> None:
    """Raise `ConfigurationError` for a `KLEIN_EDIT_*` name that is not a setting (naming the closest
    one) or a JSON-valued setting whose value is not JSON. Other names are left alone."""
    known = known_variables()
    problems: list[str] = []
    for raw_name, value in variables.items():
        name = raw_name.upper()
        if not name.startswith(ENV_PREFIX) or name in TOOLING_VARIABLES or name.startswith(TOOLING_PREFIXES):
            continue
        field = known.get(name)
        if field is None:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else "; the settings are listed in README.md"
            problems.append(f"{name} (from {origin}) is not a setting{hint}")
        elif value and _expects_json(field.annotation):
            try:
                json.loads(value)
            except ValueError:
                example = _json_example(name, field.annotation)
                problems.append(f"{name} (from {origin}) is not JSON: {example}")
    if problems:
        raise ConfigurationError("\n".join(problems))


class _CheckedSource(PydanticBaseSettingsSource):
    """A pydantic-settings source whose variables are checked by `check_variables` before use."""

    def __init__(self, source: PydanticBaseSettingsSource, origin: str) -> None:
        super().__init__(source.settings_cls)
        self._source = source
        self._origin = origin

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        if isinstance(self._source, EnvSettingsSource):
            check_variables(self._source.env_vars, self._origin)
        return self._source()


_BUCKETS = (f"{ENV_PREFIX}S3__INPUT_BUCKET", f"{ENV_PREFIX}S3__OUTPUT_BUCKET")


def _variable(error: Any) -> str:
    loc = [str(part) for part in error["loc"] if isinstance(part, str)][:2]
    return (ENV_PREFIX + "__".join(loc)).upper()


def _describe(error: Any) -> str:
    name = _variable(error)
    field = known_variables().get(name)
    if error["type"] == "missing":
        description = f" ({field.description})" if field is not None and field.description else ""
        return f"{name} is required{description}"
    shown = error.get("input")
    value = ""
    if isinstance(shown, str) and len(shown) <= 200 and not _is_secret(field):
        value = f" (got {shown!r})"
    expected = ""
    if field is not None and _expects_json(field.annotation):
        expected = f"; {_json_example(name, field.annotation)}"
    return f"{name}: {error['msg']}{value}{expected}"


def _is_secret(field: FieldInfo | None) -> bool:
    return field is None or SecretStr in (field.annotation, *typing.get_args(field.annotation))


def _expects_json(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_expects_json(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    return origin in (list, tuple, dict, set, frozenset)


def _json_example(name: str, annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"""a whole section is a JSON object, e.g. {name}='{{"field": "value"}}'"""
    if typing.get_origin(annotation) is dict:
        return f"""maps are JSON, e.g. {name}='{{"key": "value"}}'"""
    return f"""lists are JSON, e.g. {name}='["a", "b"]'"""

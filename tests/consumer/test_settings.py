"""Settings from KLEIN_EDIT_* environment variables: nesting with `__`, JSON lists, secrets kept secret."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from consumer.settings import Settings
from pipeline.config import DEFAULT_MODEL

PASSWORD = "kafka-pa55word-do-not-print"
HF_TOKEN = "hf_do_not_print_this_token"
AWS_SECRET = "aws-secret-do-not-print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Start every test from an environment without KLEIN_EDIT_* variables."""
    for name in list(os.environ):
        if name.upper().startswith("KLEIN_EDIT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.group_id == "klein-edit"
    assert settings.kafka.request_topic == "edit.requests"
    assert settings.kafka.priority_topics == []
    assert settings.kafka.request_topics == ["edit.requests"]
    assert settings.kafka.sasl_password is None
    assert settings.kafka.max_request_bytes == 1_048_576
    assert settings.worker.max_attempts == 3
    assert settings.worker.http_port == 8080
    assert settings.pipeline.model == DEFAULT_MODEL
    assert settings.cost.usd_per_megapixel == 0.002
    assert settings.log.format == "auto"


def test_nested_fields_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS", "broker-1:9093,broker-2:9093")
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__GROUP_ID", "editors")
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "5")
    monkeypatch.setenv("KLEIN_EDIT_WORKER__RETRY_BACKOFF_S", "0.25")
    monkeypatch.setenv("KLEIN_EDIT_WORKER__PROGRESS", "true")
    monkeypatch.setenv("KLEIN_EDIT_S3__ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("KLEIN_EDIT_PIPELINE__MODEL", "tiny-random")
    monkeypatch.setenv("KLEIN_EDIT_COST__USD_PER_MEGAPIXEL", "0.01")
    monkeypatch.setenv("KLEIN_EDIT_LOG__LEVEL", "DEBUG")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert settings.kafka.group_id == "editors"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.worker.max_attempts == 5
    assert settings.worker.retry_backoff_s == 0.25
    assert settings.worker.progress is True
    assert settings.s3.endpoint_url == "http://minio:9000"
    assert settings.pipeline.model == "tiny-random"
    assert settings.cost.usd_per_megapixel == 0.01
    assert settings.log.level == "DEBUG"


def test_lists_are_given_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__PRIORITY_TOPICS", '["edit.urgent", "edit.high"]')
    monkeypatch.setenv("KLEIN_EDIT_S3__ALLOWED_BUCKETS", '["brand-assets", "partner-uploads"]')
    monkeypatch.setenv("KLEIN_EDIT_PIPELINE__WARMUP_SIZES", "[[512, 512], [1024, 768]]")
    settings = Settings()
    assert settings.kafka.priority_topics == ["edit.urgent", "edit.high"]
    assert settings.kafka.request_topics == ["edit.urgent", "edit.high", "edit.requests"]
    assert settings.s3.allowed_buckets == ["brand-assets", "partner-uploads"]
    assert settings.s3.readable_buckets == frozenset({"klein-edit-inputs", "brand-assets", "partner-uploads"})
    assert settings.pipeline.warmup_sizes == [(512, 512), (1024, 768)]


def test_a_list_that_is_not_json_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__PRIORITY_TOPICS", "edit.urgent,edit.high")
    with pytest.raises(SettingsError, match='field "kafka"'):
        Settings()


def test_a_whole_section_can_be_given_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # The only way to write None from the environment: a scalar "null" is not JSON-decoded.
    monkeypatch.setenv("KLEIN_EDIT_WORKER", '{"http_port": null, "max_attempts": 7}')
    settings = Settings()
    assert settings.worker.http_port is None
    assert settings.worker.max_attempts == 7


@pytest.mark.parametrize("value", ["off", "null", "none", ""])
def test_one_variable_turns_the_http_endpoint_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KLEIN_EDIT_WORKER__HTTP_PORT", value)
    assert Settings().worker.http_port is None


def test_a_bad_http_port_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_WORKER__HTTP_PORT", "eighty")
    with pytest.raises(ValidationError, match="http_port"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "0", "max_attempts"),
        ("KLEIN_EDIT_WORKER__MAX_IN_FLIGHT", "many", "max_in_flight"),
        ("KLEIN_EDIT_KAFKA__SECURITY_PROTOCOL", "TLS", "security_protocol"),
        ("KLEIN_EDIT_KAFKA__LOW_LANE_SHARE", "1.5", "low_lane_share"),
        ("KLEIN_EDIT_LOG__FORMAT", "xml", "format"),
        ("KLEIN_EDIT_PIPELINE__DEVICE", "tpu", "device"),
        ("KLEIN_EDIT_COST__USD_PER_MEGAPIXEL", "-1", "usd_per_megapixel"),
    ],
)
def test_invalid_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert field in str(info.value)


def test_unknown_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_NOT_A_SECTION", "x")
    monkeypatch.setenv("KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert Settings().kafka.bootstrap_servers == "127.0.0.1:9092"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.kafka = settings.kafka  # type: ignore[misc]


def test_secrets_are_read_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__SASL_USERNAME", "editor")
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("KLEIN_EDIT_PIPELINE__HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("KLEIN_EDIT_S3__ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("KLEIN_EDIT_S3__SECRET_ACCESS_KEY", AWS_SECRET)
    settings = Settings()
    assert isinstance(settings.kafka.sasl_password, SecretStr)
    assert settings.kafka.sasl_password.get_secret_value() == PASSWORD
    assert settings.pipeline.hf_token is not None
    assert settings.pipeline.hf_token.get_secret_value() == HF_TOKEN
    assert settings.s3.secret_access_key is not None
    assert settings.s3.secret_access_key.get_secret_value() == AWS_SECRET
    assert settings.kafka.sasl_username == "editor"
    for shown in (
        repr(settings),
        str(settings),
        repr(settings.kafka),
        str(settings.s3),
        settings.model_dump_json(),
    ):
        for secret in (PASSWORD, HF_TOKEN, AWS_SECRET, "AKIAEXAMPLE"):
            assert secret not in shown
    assert "**********" in repr(settings)


def test_worker_name_defaults_to_host_and_pid() -> None:
    assert Settings().worker.name.endswith(f"-{os.getpid()}")

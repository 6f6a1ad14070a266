"""Settings from KLEIN_EDIT_* environment variables, a .env file and a secrets directory: nesting with
`__`, JSON lists, secrets kept secret, and every mistake named in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from consumer.settings import ConfigurationError, Settings, load_settings
from pipeline.config import DEFAULT_MODEL

PASSWORD = "kafka-pa55word-do-not-print"
HF_TOKEN = "hf_do_not_print_this_token"
AWS_SECRET = "aws-secret-do-not-print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Start every test from an environment with only the two bucket names (required on AWS), in an
    empty directory (no .env file)."""
    for name in list(os.environ):
        if name.upper().startswith("KLEIN_EDIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KLEIN_EDIT_S3__INPUT_BUCKET", "acme-inputs")
    monkeypatch.setenv("KLEIN_EDIT_S3__OUTPUT_BUCKET", "acme-outputs")
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert (settings.s3.input_bucket, settings.s3.output_bucket) == ("acme-inputs", "acme-outputs")
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
    assert settings.s3.readable_buckets == frozenset({"acme-inputs", "brand-assets", "partner-uploads"})
    assert settings.pipeline.warmup_sizes == [(512, 512), (1024, 768)]


def test_a_list_that_is_not_json_names_the_variable_and_the_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__PRIORITY_TOPICS", "edit.urgent,edit.high")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert str(info.value) == (
        "KLEIN_EDIT_KAFKA__PRIORITY_TOPICS (from the environment) is not JSON: "
        """lists are JSON, e.g. KLEIN_EDIT_KAFKA__PRIORITY_TOPICS='["a", "b"]'"""
    )


def test_a_section_that_is_not_json_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_WORKER", "max_attempts=5")
    with pytest.raises(ConfigurationError, match=r"KLEIN_EDIT_WORKER .* a whole section is a JSON object"):
        load_settings()


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


def test_a_misspelled_variable_is_named_with_the_closest_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVER", "broker:9092")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert str(info.value) == (
        "KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVER (from the environment) is not a setting; "
        "did you mean KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS?"
    )


def test_an_unknown_section_is_an_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_NOT_A_SECTION", "x")
    with pytest.raises(ConfigurationError, match=r"KLEIN_EDIT_NOT_A_SECTION .*is not a setting"):
        load_settings()


def test_the_tooling_variables_are_not_settings_and_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("KLEIN_EDIT_TEST_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("KLEIN_EDIT_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
    monkeypatch.setenv("klein_edit_kafka__group_id", "lower-case-works")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.group_id == "lower-case-works"


def test_bucket_names_are_required_on_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # S3 bucket names are global: a default such as klein-edit-outputs may be somebody else's bucket.
    monkeypatch.delenv("KLEIN_EDIT_S3__INPUT_BUCKET")
    monkeypatch.delenv("KLEIN_EDIT_S3__OUTPUT_BUCKET")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    # One line for both, saying what a user who forgot `dev up`'s exports in a new terminal should do.
    assert str(info.value) == (
        "KLEIN_EDIT_S3__INPUT_BUCKET and KLEIN_EDIT_S3__OUTPUT_BUCKET are not set (required without "
        "KLEIN_EDIT_S3__ENDPOINT_URL, i.e. on AWS): for local services, paste the `export` lines that "
        "`klein-edit dev up` prints into this terminal; on AWS, set them to your buckets"
    )


def test_one_missing_bucket_name_comes_first_and_other_problems_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KLEIN_EDIT_S3__OUTPUT_BUCKET")
    monkeypatch.setenv("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("KLEIN_EDIT_S3__OUTPUT_BUCKET is not set (required without ")
    assert lines[1].startswith("KLEIN_EDIT_WORKER__MAX_ATTEMPTS: ")


def test_an_endpoint_of_your_own_gets_local_bucket_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLEIN_EDIT_S3__INPUT_BUCKET")
    monkeypatch.delenv("KLEIN_EDIT_S3__OUTPUT_BUCKET")
    monkeypatch.setenv("KLEIN_EDIT_S3__ENDPOINT_URL", "http://minio:9000")
    s3 = load_settings().s3
    assert (s3.input_bucket, s3.output_bucket) == ("klein-edit-inputs", "klein-edit-outputs")


def test_a_value_out_of_range_names_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLEIN_EDIT_WORKER__MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert str(info.value) == (
        "KLEIN_EDIT_WORKER__MAX_ATTEMPTS: Input should be greater than or equal to 1 (got '0')"
    )


def test_a_dotenv_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "KLEIN_EDIT_KAFKA__GROUP_ID=from-dotenv\nKLEIN_EDIT_KAFKA__CLIENT_ID=from-dotenv\nOTHER_TOOL=x\n"
    )
    monkeypatch.setenv("KLEIN_EDIT_KAFKA__CLIENT_ID", "from-env")
    settings = load_settings()
    assert settings.kafka.group_id == "from-dotenv"
    assert settings.kafka.client_id == "from-env"
    other = tmp_path / "other.env"
    other.write_text("KLEIN_EDIT_KAFKA__GROUP_ID=from-other\n")
    assert load_settings(env_file=other).kafka.group_id == "from-other"


def test_a_misspelled_name_in_the_dotenv_file_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KLEIN_EDIT_WORKER__MAX_ATEMPTS=5\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert str(info.value) == (
        "KLEIN_EDIT_WORKER__MAX_ATEMPTS (from the .env file) is not a setting; "
        "did you mean KLEIN_EDIT_WORKER__MAX_ATTEMPTS?"
    )


def test_a_secrets_directory_holds_one_file_per_variable(tmp_path: Path) -> None:
    """A mounted Kubernetes Secret: each key a file named like the variable; the newline is stripped."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "KLEIN_EDIT_KAFKA__SASL_PASSWORD").write_text(PASSWORD + "\n")
    (secrets / "KLEIN_EDIT_S3__SECRET_ACCESS_KEY").write_text(AWS_SECRET)
    settings = load_settings(secrets_dir=secrets)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == PASSWORD
    assert settings.s3.secret_access_key is not None
    assert settings.s3.secret_access_key.get_secret_value() == AWS_SECRET
    (secrets / "KLEIN_EDIT_KAFKA__SASL_PASWORD").write_text("x")
    with pytest.raises(
        ConfigurationError, match=r"KLEIN_EDIT_KAFKA__SASL_PASWORD \(from the secrets directory"
    ):
        load_settings(secrets_dir=secrets)


def test_a_missing_secrets_directory_is_fine(tmp_path: Path) -> None:
    assert load_settings(secrets_dir=tmp_path / "absent").kafka.sasl_password is None


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


def test_every_setting_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker process or the chart writes into the environment parses back to the same values
    (a `Literal[512]` field, for one, would refuse the environment's "512")."""
    from tests.consumer.harness import settings_env

    defaults = load_settings(s3={"endpoint_url": "http://s3:9000"})
    for name, value in settings_env(defaults).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == defaults


def test_url_inputs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().url_inputs.enabled  # off by default
    monkeypatch.setenv("KLEIN_EDIT_URL_INPUTS__ENABLED", "true")
    with pytest.raises(ConfigurationError, match=r"KLEIN_EDIT_URL_INPUTS.*allowed_hosts is empty"):
        load_settings()
    monkeypatch.setenv("KLEIN_EDIT_URL_INPUTS__ALLOWED_HOSTS", '["CDN.example.com", "*.cloudfront.net"]')
    monkeypatch.setenv("KLEIN_EDIT_URL_INPUTS__ALLOWED_PRIVATE_NETWORKS", '["10.20.0.0/16"]')
    urls = load_settings().url_inputs
    assert urls.allowed_hosts == ["cdn.example.com", "*.cloudfront.net"]
    assert urls.allowed_private_networks == ["10.20.0.0/16"]
    monkeypatch.setenv("KLEIN_EDIT_URL_INPUTS__ALLOWED_PRIVATE_NETWORKS", '["10.20.0.0/33"]')
    with pytest.raises(
        ConfigurationError, match=r"KLEIN_EDIT_URL_INPUTS__ALLOWED_PRIVATE_NETWORKS.*not a CIDR"
    ):
        load_settings()

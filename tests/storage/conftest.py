"""Fixtures for the storage tests: real moto S3 servers (subprocesses), never mocks.

The session-wide `s3_endpoint` comes from tests/conftest.py; private servers for fault tests come
from `moto_factory` here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr

from consumer.cli.local_services import MotoServer
from storage import ImageStore, S3Settings
from tests.services import S3_ACCESS_KEY, S3_SECRET_KEY, reset_s3

INPUT_BUCKET = "test-inputs"
OUTPUT_BUCKET = "test-outputs"


@pytest.fixture
def clean_s3(s3_endpoint: str) -> str:
    """Wipes the server's state before the test (moto or MinIO); returns the endpoint."""
    reset_s3(s3_endpoint)
    return s3_endpoint


@pytest.fixture
def moto_factory() -> Iterator[Callable[..., MotoServer]]:
    """Starts private moto servers (for fault tests) and always stops them, paused or not."""
    servers: list[MotoServer] = []

    def start(extra_env: dict[str, str] | None = None) -> MotoServer:
        server = MotoServer(environment={**os.environ, **extra_env} if extra_env else None)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def make_settings(endpoint: str, **overrides: object) -> S3Settings:
    values: dict[str, object] = {
        "endpoint_url": endpoint,
        # moto checks no credentials; MinIO (testcontainers) checks these.
        "access_key_id": SecretStr(S3_ACCESS_KEY),
        "secret_access_key": SecretStr(S3_SECRET_KEY),
        "input_bucket": INPUT_BUCKET,
        "output_bucket": OUTPUT_BUCKET,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 5.0,
        "max_attempts": 2,
    }
    values.update(overrides)
    return S3Settings.model_validate(values)


@pytest.fixture
def s3_settings(clean_s3: str) -> S3Settings:
    return make_settings(clean_s3)


@pytest.fixture
def store(s3_settings: S3Settings) -> ImageStore:
    """A store on a clean server with the input and output buckets created."""
    image_store = ImageStore(s3_settings)
    image_store.ensure_bucket(INPUT_BUCKET)
    image_store.ensure_bucket(OUTPUT_BUCKET)
    return image_store


@pytest.fixture
def settings_for() -> Callable[..., S3Settings]:
    """`settings_for(endpoint, **overrides)`: test settings for any endpoint (fault tests)."""
    return make_settings

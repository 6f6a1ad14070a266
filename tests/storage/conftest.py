"""Fixtures for the storage tests: real moto S3 servers (subprocesses), never mocks.

The session-wide `s3_endpoint` comes from tests/conftest.py; private servers for fault tests come
from `moto_factory` here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from storage import ImageStore, S3Settings

ENDPOINT_ENV = "KLEIN_EDIT_TEST_S3_ENDPOINT"
INPUT_BUCKET = "test-inputs"
OUTPUT_BUCKET = "test-outputs"
# moto does not check credentials by default, but explicit ones keep boto3 away from the host's chain.
TEST_KEY = "testing"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    endpoint: str

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            # A stopped process does not act on SIGTERM until continued.
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_moto(extra_env: dict[str, str] | None = None) -> MotoServer:
    script = Path(sys.executable).with_name("moto_server")
    command = [str(script)] if script.exists() else [shutil.which("moto_server") or "moto_server"]
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    process = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = MotoServer(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=1):
                return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("moto_server did not start within 20 s")


def reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def clean_s3(s3_endpoint: str) -> str:
    """Wipes the server's state before the test; returns the endpoint."""
    reset_moto(s3_endpoint)
    return s3_endpoint


@pytest.fixture
def moto_factory() -> Iterator[Callable[..., MotoServer]]:
    """Starts private moto servers (for fault tests) and always stops them, paused or not."""
    servers: list[MotoServer] = []

    def start(extra_env: dict[str, str] | None = None) -> MotoServer:
        server = start_moto(extra_env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def make_settings(endpoint: str, **overrides: object) -> S3Settings:
    values: dict[str, object] = {
        "endpoint_url": endpoint,
        "access_key_id": SecretStr(TEST_KEY),
        "secret_access_key": SecretStr(TEST_KEY),
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

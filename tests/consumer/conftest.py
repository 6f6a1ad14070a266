"""Fixtures for the consumer tests: the tiny editor (built once) and per-test isolated settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from consumer.cli.local_services import MotoServer, TansuBroker
from consumer.settings import Settings
from pipeline import Editor, KleinEditor
from pipeline.config import TINY_RANDOM, PipelineSettings
from tests.consumer.harness import WorkerProcess, close_shared_producers, integration_settings
from tests.consumer.https_origin import HttpsOrigin
from tests.tls import TlsFiles, make_tls


@pytest.fixture(scope="session")
def tiny_editor() -> Editor:
    return KleinEditor.load(PipelineSettings(model=TINY_RANDOM, device="cpu", warmup=False))


@pytest.fixture(scope="session", autouse=True)
async def shared_producers() -> AsyncIterator[None]:
    """The harness's producers (one per cluster, `harness.shared_producer`) live for the session."""
    yield
    await close_shared_producers()


@pytest.fixture
def make_settings(kafka_bootstrap: str, s3_endpoint: str) -> Callable[..., Settings]:
    def make(**sections: dict[str, object]) -> Settings:
        return integration_settings(kafka_bootstrap, s3_endpoint, **sections)

    return make


@pytest.fixture
def worker_processes() -> Iterator[Callable[..., WorkerProcess]]:
    """Starts real worker processes (`WorkerProcess(settings, spec, **worker_overrides)`); kills them all
    at the end of the test, whatever happened."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, spec: str, **worker: Any) -> WorkerProcess:
        process = WorkerProcess(settings, spec, **worker)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def private_moto() -> Iterator[MotoServer]:
    """An S3 server of the test's own, to `pause()` (an outage) and `resume()` without touching others."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def private_tansu() -> Iterator[TansuBroker]:
    """A Kafka broker of the test's own, to `pause()` and `resume()`."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test root CA and a server certificate for localhost, 127.0.0.1 and ::1."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def https_origin(tls_files: TlsFiles) -> AsyncIterator[HttpsOrigin]:
    """A local https server on 127.0.0.1 presenting the test certificate (`tests.consumer.https_origin`)."""
    origin = HttpsOrigin(tls_files)
    await origin.start()
    yield origin
    await origin.stop()

"""Project-wide fixtures: a real Kafka broker and a real S3 server for the integration tests.

Where each comes from, in order:
1. an explicit endpoint in the environment (`KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP`,
   `KLEIN_EDIT_TEST_S3_ENDPOINT`), which is what `.ci/run` sets after starting the services;
2. a local Tansu broker / moto server process started here (`consumer.services`).
A service that cannot be had is a test failure with the reason, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from consumer.services import MotoServer, ServiceError, TansuBroker

KAFKA_ENV = "KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP"
S3_ENV = "KLEIN_EDIT_TEST_S3_ENDPOINT"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get(KAFKA_ENV)
    if configured:
        yield configured
        return
    try:
        broker = TansuBroker()
        broker.start()
    except ServiceError as exc:
        pytest.fail(f"no Kafka broker for the integration tests: {exc} (or set {KAFKA_ENV})")
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    configured = os.environ.get(S3_ENV)
    if configured:
        yield configured
        return
    try:
        server = MotoServer()
        server.start()
    except ServiceError as exc:
        pytest.fail(f"no S3 server for the integration tests: {exc} (or set {S3_ENV})")
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA; without it they are reported as skipped with the reason (not services)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Project-wide fixtures: a real Kafka broker and a real S3 server for the integration tests.

Where each comes from, in order:
1. an explicit endpoint in the environment (`KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP`,
   `KLEIN_EDIT_TEST_S3_ENDPOINT`), which is what `.ci/run` sets after starting the services;
2. a local Tansu broker / moto server process started here (`consumer.services`).
A service that cannot be had is a test failure with the reason, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consumer.services import LocalService, MotoServer, ServiceError, TansuBroker

KAFKA_ENV = "KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP"
# Which broker KAFKA_ENV points at: "tansu" (default, also what is started here) or "apache-kafka".
KAFKA_KIND_ENV = "KLEIN_EDIT_TEST_KAFKA_KIND"
S3_ENV = "KLEIN_EDIT_TEST_S3_ENDPOINT"


def _service(
    env_name: str, start: Callable[[], LocalService], address: Callable[[Any], str]
) -> Iterator[str]:
    configured = os.environ.get(env_name)
    if configured:
        yield configured
        return
    try:
        service = start()
        service.start()
    except ServiceError as exc:
        pytest.fail(
            f"no {env_name.removeprefix('KLEIN_EDIT_TEST_').lower()} for the integration tests: {exc} "
            f"(or set {env_name})"
        )
    try:
        yield address(service)
    finally:
        service.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    yield from _service(KAFKA_ENV, TansuBroker, lambda broker: broker.bootstrap_servers)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    yield from _service(S3_ENV, MotoServer, lambda server: server.endpoint_url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA, `apache_kafka` tests an Apache Kafka broker: without them they are
    reported as skipped with the reason (a capability the broker lacks, not a missing service)."""
    import torch

    if os.environ.get(KAFKA_KIND_ENV, "tansu") != "apache-kafka":
        needs_kafka = pytest.mark.skip(
            reason=f"needs Apache Kafka (Tansu has no transactions nor idempotent producer); set "
            f"{KAFKA_ENV} and {KAFKA_KIND_ENV}=apache-kafka"
        )
        for item in items:
            if "apache_kafka" in item.keywords:
                item.add_marker(needs_kafka)

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Project-wide fixtures: a real Kafka broker and a real S3 server for the integration tests.

Where each comes from is decided in tests/services.py: an explicit endpoint in the environment
(`KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP`, `KLEIN_EDIT_TEST_S3_ENDPOINT`, which `scripts/dev test` and
`.ci/run` set), else testcontainers (Apache Kafka and MinIO) when a Docker engine answers, else
local Tansu and moto processes. A service that cannot be had is a test failure with the reason, never
a skip. Tests marked `apache_kafka` are skipped, with the reason, when the broker is not Apache Kafka.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from consumer.cli.local_services import ServiceError
from tests.services import (
    APACHE_KAFKA_REASON,
    KAFKA_ENV,
    S3_ENV,
    Service,
    Source,
    choose_source,
    docker_reachable,
    kafka_is_apache,
    kafka_service,
    s3_service,
)

_SOURCES = pytest.StashKey[dict[str, Source]]()


def _sources(config: pytest.Config) -> dict[str, Source]:
    """The source of each service, decided once per session (the Docker probe runs at most once)."""
    if _SOURCES not in config.stash:
        config.stash[_SOURCES] = {
            var: choose_source(os.environ, var, docker_reachable) for var in (KAFKA_ENV, S3_ENV)
        }
    return config.stash[_SOURCES]


def _serve(name: str, make: Callable[[], tuple[Service | None, Callable[[], str]]]) -> Iterator[str]:
    try:
        service, address = make()
        if service is not None:
            service.start()
    except ServiceError as exc:
        pytest.fail(f"no {name} for the integration tests: {exc} (or set {KAFKA_ENV} / {S3_ENV})")
    try:
        yield address()
    finally:
        if service is not None:
            service.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    source = _sources(pytestconfig)[KAFKA_ENV]
    yield from _serve(f"kafka ({source})", lambda: kafka_service(source, os.environ))


@pytest.fixture(scope="session")
def s3_endpoint(pytestconfig: pytest.Config) -> Iterator[str]:
    source = _sources(pytestconfig)[S3_ENV]
    yield from _serve(f"s3 ({source})", lambda: s3_service(source, os.environ))


@pytest.fixture(scope="session")
def kafka_is_apache_kafka(pytestconfig: pytest.Config) -> bool:
    """Whether the session's broker is Apache Kafka, for a test that asserts more there than Tansu can
    show (a test that needs Apache Kafka is marked `apache_kafka` instead)."""
    return kafka_is_apache(_sources(pytestconfig)[KAFKA_ENV], os.environ)


def pytest_report_header(config: pytest.Config) -> str:
    sources = _sources(config)
    kind = "Apache Kafka" if kafka_is_apache(sources[KAFKA_ENV], os.environ) else "Tansu"
    return f"services: kafka from {sources[KAFKA_ENV]} ({kind}), s3 from {sources[S3_ENV]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA and `apache_kafka` tests Apache Kafka; without them they are reported as
    skipped with the reason (never for a missing service). Markers are looked up as markers: an item's
    `keywords` also hold the names of its parents, the checkout's directory included (a clone in a
    directory named `gpu` would skip every test)."""
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)
    if not any(item.get_closest_marker("apache_kafka") is not None for item in items):
        return  # no need to probe for Docker
    if not kafka_is_apache(_sources(config)[KAFKA_ENV], os.environ):
        skip = pytest.mark.skip(reason=APACHE_KAFKA_REASON)
        for item in items:
            if item.get_closest_marker("apache_kafka") is not None:
                item.add_marker(skip)

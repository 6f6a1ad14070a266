"""Where the integration tests' Kafka and S3 come from (tests/services.py), with the Docker probe injected.

No Docker engine is needed: the probe is a fake, and the container specifications are checked as data.
"""

from __future__ import annotations

import pytest

from consumer.cli.local_services import MotoServer, ServiceError, TansuBroker
from tests.services import (
    CONTAINERS_ENV,
    KAFKA_ENV,
    KAFKA_IMAGE,
    KAFKA_IMAGE_ENV,
    KAFKA_KIND_ENV,
    MINIO_IMAGE,
    S3_ENV,
    ApacheKafkaContainer,
    MinioContainer,
    Source,
    apache_kafka_environment,
    choose_source,
    kafka_is_apache,
    kafka_service,
    s3_service,
)


class Probe:
    """A fake Docker probe that counts how often it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer


@pytest.mark.parametrize("var", [KAFKA_ENV, S3_ENV])
@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_an_explicit_endpoint_wins_and_docker_is_not_even_asked(var: str, mode: str) -> None:
    probe = Probe(True)
    env = {var: "somewhere:1234", CONTAINERS_ENV: mode}
    assert choose_source(env, var, probe) is Source.ENVIRONMENT
    assert probe.asked == 0


@pytest.mark.parametrize(
    ("mode", "docker", "expected"),
    [
        ("auto", True, Source.CONTAINER),
        ("auto", False, Source.LOCAL),
        ("", True, Source.CONTAINER),
        ("on", True, Source.CONTAINER),
        ("off", True, Source.LOCAL),
        ("off", False, Source.LOCAL),
    ],
)
def test_testcontainers_when_docker_answers_else_local_processes(
    mode: str, docker: bool, expected: Source
) -> None:
    env = {CONTAINERS_ENV: mode} if mode else {}
    assert choose_source(env, KAFKA_ENV, Probe(docker)) is expected


def test_off_never_probes_docker() -> None:
    probe = Probe(True)
    choose_source({CONTAINERS_ENV: "off"}, S3_ENV, probe)
    assert probe.asked == 0


def test_containers_on_without_docker_is_an_error_not_a_fallback() -> None:
    with pytest.raises(ServiceError, match="no Docker engine"):
        choose_source({CONTAINERS_ENV: "on"}, KAFKA_ENV, Probe(False))
    with pytest.raises(ServiceError, match="auto, on or off"):
        choose_source({CONTAINERS_ENV: "sometimes"}, KAFKA_ENV, Probe(True))


def test_only_apache_kafka_runs_the_apache_kafka_tests() -> None:
    assert kafka_is_apache(Source.CONTAINER, {})
    assert not kafka_is_apache(Source.LOCAL, {})  # Tansu
    assert not kafka_is_apache(Source.ENVIRONMENT, {})  # a broker given without its kind: Tansu
    assert kafka_is_apache(Source.ENVIRONMENT, {KAFKA_KIND_ENV: "apache-kafka"})


def test_each_source_makes_its_service() -> None:
    env = {KAFKA_ENV: "k:9092", S3_ENV: "http://s3:9000"}
    for make in (kafka_service, s3_service):
        service, _ = make(Source.ENVIRONMENT, env)
        assert service is None
    assert kafka_service(Source.ENVIRONMENT, env)[1]() == "k:9092"
    assert s3_service(Source.ENVIRONMENT, env)[1]() == "http://s3:9000"
    assert isinstance(kafka_service(Source.LOCAL, {})[0], TansuBroker)
    assert isinstance(s3_service(Source.LOCAL, {})[0], MotoServer)
    kafka = kafka_service(Source.CONTAINER, {})[0]
    assert isinstance(kafka, ApacheKafkaContainer)
    assert kafka.image == KAFKA_IMAGE
    assert kafka.image.startswith("apache/kafka:")
    s3 = s3_service(Source.CONTAINER, {})[0]
    assert isinstance(s3, MinioContainer)
    assert s3.image == MINIO_IMAGE
    custom = kafka_service(Source.CONTAINER, {KAFKA_IMAGE_ENV: "apache/kafka:3.8.1"})[0]
    assert isinstance(custom, ApacheKafkaContainer)
    assert custom.image == "apache/kafka:3.8.1"


def test_the_apache_kafka_node_advertises_the_host_port_and_supports_transactions() -> None:
    env = apache_kafka_environment("localhost", 49152)
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://localhost:49152"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@localhost:9093"
    # One node: every internal topic must be creatable with one replica, or transactions hang.
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)

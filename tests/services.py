"""Where the integration tests get Kafka and S3 from: the environment, testcontainers, or local processes.

Order, for each service on its own:
1. an explicit endpoint in the environment (`KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP`,
   `KLEIN_EDIT_TEST_S3_ENDPOINT`; `scripts/dev test` sets the Kafka one when it starts Apache Kafka,
   `.ci/run` both);
2. testcontainers, when a Docker engine answers: Apache Kafka (`apache/kafka`, KRaft, one node) and
   MinIO. `KLEIN_EDIT_TEST_CONTAINERS=off` skips this step, `=on` makes a missing engine an error;
3. local processes: the embedded Tansu broker and moto server (`consumer.cli.local_services`).

What only Apache Kafka can show (the idempotent producer, transactions, `read_committed` on aborted
transactions) is marked `apache_kafka`; those tests are skipped, with the reason, on Tansu. A broker
from the environment counts as Apache Kafka when `KLEIN_EDIT_TEST_KAFKA_KIND=apache-kafka`.
"""

from __future__ import annotations

import contextlib
import functools
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Protocol

import boto3

from consumer.cli.local_services import MotoServer, ServiceError, TansuBroker, free_port

KAFKA_ENV = "KLEIN_EDIT_TEST_KAFKA_BOOTSTRAP"
S3_ENV = "KLEIN_EDIT_TEST_S3_ENDPOINT"
CONTAINERS_ENV = "KLEIN_EDIT_TEST_CONTAINERS"
KAFKA_KIND_ENV = "KLEIN_EDIT_TEST_KAFKA_KIND"
KAFKA_IMAGE_ENV = "KLEIN_EDIT_TEST_KAFKA_IMAGE"
MINIO_IMAGE_ENV = "KLEIN_EDIT_TEST_MINIO_IMAGE"

# 3.9 is the last line that still speaks every protocol version aiokafka 0.14 uses (Kafka 4.0 dropped
# the oldest ones, KIP-896).
KAFKA_IMAGE = "apache/kafka:3.9.1"
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"
# moto accepts any key; MinIO wants a secret of at least 8 characters.
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing-secret"
APACHE_KAFKA_REASON = (
    "needs Apache Kafka (Tansu lacks it): run `scripts/dev test` where java 17+ and mvn are present (it "
    "starts Apache Kafka), or with a Docker engine (testcontainers starts apache/kafka), "
    f"or point {KAFKA_ENV} at Apache Kafka and set {KAFKA_KIND_ENV}=apache-kafka"
)


class Source(StrEnum):
    ENVIRONMENT = "environment"
    CONTAINER = "testcontainers"
    LOCAL = "local process"


def choose_source(env: Mapping[str, str], endpoint_var: str, docker_reachable: Callable[[], bool]) -> Source:
    """Where one service comes from (see the module docstring). Raises ServiceError on a bad setting."""
    if env.get(endpoint_var):
        return Source.ENVIRONMENT
    mode = env.get(CONTAINERS_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise ServiceError(f"{CONTAINERS_ENV} must be auto, on or off, not {mode!r}")
    if mode == "off":
        return Source.LOCAL
    if docker_reachable():
        return Source.CONTAINER
    if mode == "on":
        raise ServiceError(f"{CONTAINERS_ENV}=on but no Docker engine answers (DOCKER_HOST or the socket)")
    return Source.LOCAL


def kafka_is_apache(source: Source, env: Mapping[str, str]) -> bool:
    """Whether the Kafka the tests get is Apache Kafka (not Tansu)."""
    if source is Source.CONTAINER:
        return True
    if source is Source.ENVIRONMENT:
        return env.get(KAFKA_KIND_ENV, "tansu").strip().lower() in ("apache-kafka", "apache")
    return False


@functools.cache
def docker_reachable(timeout_s: float = 3.0) -> bool:
    """True when a Docker engine answers a ping (asked once per test session)."""
    try:
        import docker

        client = docker.from_env(timeout=int(timeout_s))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no permission, a hung engine: all mean "no Docker"
        return False


# ---------------------------------------------------------------------------------------------------
# The services


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def apache_kafka_environment(advertised_host: str, advertised_port: int) -> dict[str, str]:
    """`apache/kafka` settings for one KRaft node whose clients connect to host:port on the host.

    Topics auto-created with 4 partitions, like Tansu's; replication factors of 1 so transactions and
    the idempotent producer work on one node; no initial rebalance delay, as on Tansu.
    """
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{advertised_host}:{advertised_port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "4",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
    }


class ApacheKafkaContainer:
    """Apache Kafka in Docker through testcontainers, advertised on a fixed host port."""

    def __init__(self, image: str = KAFKA_IMAGE) -> None:
        self.image = image
        self.bootstrap_servers = ""
        self._container: Any = None

    def start(self) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.docker_client import DockerClient
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        host, port = DockerClient().host(), free_port()
        container = DockerContainer(self.image).with_bind_ports(9092, port)
        for name, value in apache_kafka_environment(host, port).items():
            container.with_env(name, value)
        container.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
        self._container = container.start()
        self.bootstrap_servers = f"{host}:{port}"

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop()
            self._container = None


class MinioContainer:
    """MinIO in Docker through testcontainers (a plain container: no `minio` client package needed)."""

    def __init__(self, image: str = MINIO_IMAGE) -> None:
        self.image = image
        self.endpoint_url = ""
        self._container: Any = None

    def start(self) -> None:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import HttpWaitStrategy

        container = (
            DockerContainer(self.image)
            .with_exposed_ports(9000)
            .with_env("MINIO_ROOT_USER", S3_ACCESS_KEY)
            .with_env("MINIO_ROOT_PASSWORD", S3_SECRET_KEY)
            .with_command("server /data --address :9000")
        )
        container.waiting_for(
            HttpWaitStrategy(9000, "/minio/health/live").for_status_code(200).with_startup_timeout(60)
        )
        self._container = container.start()
        host = self._container.get_container_host_ip()
        self.endpoint_url = f"http://{host}:{self._container.get_exposed_port(9000)}"

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop()
            self._container = None


def kafka_service(source: Source, env: Mapping[str, str]) -> tuple[Service | None, Callable[[], str]]:
    """(the service to start and stop, or None; how to read its bootstrap address once started)."""
    if source is Source.ENVIRONMENT:
        return None, lambda: env[KAFKA_ENV]
    if source is Source.CONTAINER:
        container = ApacheKafkaContainer(env.get(KAFKA_IMAGE_ENV) or KAFKA_IMAGE)
        return container, lambda: container.bootstrap_servers
    broker = TansuBroker()
    return broker, lambda: broker.bootstrap_servers


def s3_service(source: Source, env: Mapping[str, str]) -> tuple[Service | None, Callable[[], str]]:
    """(the service to start and stop, or None; how to read its endpoint URL once started)."""
    if source is Source.ENVIRONMENT:
        return None, lambda: env[S3_ENV]
    if source is Source.CONTAINER:
        container = MinioContainer(env.get(MINIO_IMAGE_ENV) or MINIO_IMAGE)
        return container, lambda: container.endpoint_url
    server = MotoServer()
    return server, lambda: server.endpoint_url


def reset_s3(endpoint_url: str) -> None:
    """Wipe every bucket and object: moto's reset call, or (MinIO, AWS-like servers) delete them all."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except urllib.error.HTTPError:
        pass  # not moto
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        with contextlib.suppress(Exception):
            s3.delete_bucket(Bucket=name)

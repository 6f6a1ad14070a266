"""The worker against an Apache Kafka that checks who it is and what it may do (issue 25).

One broker for the module (tests/kafka_broker.py: SCRAM-SHA-512 users, OAUTHBEARER validated by the
broker against a local OIDC provider's JWKS, `StandardAuthorizer` denying what no ACL allows). Each test
has its own principal, granted exactly the worker's ACLs (`worker_acls`, the table in
docs/operations.md). Topics, requests, results and lag are handled as the super user, as an operator
or a producer with its own ACLs would.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from consumer.app import build_worker
from consumer.cli.local_services import ServiceError, free_port
from consumer.settings import Settings
from consumer.worker import EXIT_OK, KafkaAccessDenied
from pipeline import StandInEditor
from tests.consumer.harness import (
    WorkerProcess,
    dead_letters,
    integration_settings,
    lag,
    no_lag,
    png_bytes,
    prepare,
    publish,
    read_topic,
    request,
    results,
    running_worker,
    stage_image,
    wait_for_attempt_record,
    wait_for_no_lag,
)
from tests.kafka_broker import Acl, OidcClient, OidcProvider, SecuredKafka, secured_kafka, worker_acls

# Each takes 8-60 s on 2 cores (a broker of the module's own, workers that load the tiny classifier).
pytestmark = [pytest.mark.integration, pytest.mark.apache_kafka, pytest.mark.slow]

SCRAM_USERS = {"edit-worker": "scram-secret-1", "acl-drill": "scram-secret-2"}
OIDC_CLIENTS = {
    "oauth-worker": OidcClient("oidc-secret-1"),
    "wrong-audience": OidcClient("oidc-secret-2", audience="some-other-cluster"),
    "forged": OidcClient("oidc-secret-3", forged=True),
}


@pytest.fixture(scope="module")
def broker() -> Iterator[SecuredKafka]:
    oidc = OidcProvider(clients=dict(OIDC_CLIENTS))
    try:
        with secured_kafka(SCRAM_USERS, oidc) as started:
            yield started
    except ServiceError as exc:
        pytest.fail(f"no Apache Kafka with SASL for the security tests: {exc}")


def secured(broker: SecuredKafka, s3_endpoint: str, **kafka: Any) -> tuple[Settings, Settings]:
    """(the worker's settings on the SASL listener, the same topics and group for the super user)."""
    settings = integration_settings(
        broker.bootstrap,
        s3_endpoint,
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "create_topics": False,  # as in production: no CREATE ACL
            "enable_idempotence": True,  # Apache Kafka has it; WRITE implies IdempotentWrite
            **kafka,
        },
    )
    admin_kafka = settings.kafka.model_copy(
        update={
            "bootstrap_servers": broker.admin_bootstrap,
            "security_protocol": "PLAINTEXT",
            "sasl_mechanism": None,
            "create_topics": True,
        }
    )
    return settings, settings.model_copy(update={"kafka": admin_kafka})


def scram(user: str) -> dict[str, Any]:
    return {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": user, "sasl_password": SCRAM_USERS[user]}


def oauth(broker: SecuredKafka, client_id: str) -> dict[str, Any]:
    assert broker.oidc is not None
    return {
        "sasl_mechanism": "OAUTHBEARER",
        "oauth_token_endpoint": broker.oidc.token_endpoint,
        "oauth_client_id": client_id,
        "oauth_client_secret": SecretStr(OIDC_CLIENTS[client_id].secret),
    }


def standin() -> StandInEditor:
    return StandInEditor(edit_ms=20)


async def refused(settings: Settings) -> str:
    """The message a worker with `settings` stops start-up with (it must stop, not retry forever)."""
    worker = build_worker(settings, editor_factory=standin)
    with pytest.raises(KafkaAccessDenied) as info:
        await asyncio.wait_for(worker.run(asyncio.Event()), timeout=90)
    return str(info.value)


async def readyz(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as response,
    ):
        return response.status, await response.text()


async def until(check: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


@pytest.mark.timeout(240)
async def test_scram_sha_512_with_exactly_the_workers_acls(broker: SecuredKafka, s3_endpoint: str) -> None:
    settings, admin = secured(broker, s3_endpoint, **scram("edit-worker"))
    store = await prepare(admin)
    acls = worker_acls(settings.kafka, "User:edit-worker")
    broker.grant(acls)
    assert broker.acls_of("User:edit-worker") == set(acls)  # nothing else: no CREATE, no cluster ACL
    image = stage_image(store, settings, "scram.png", png_bytes(64, 64))

    async with running_worker(settings, standin, join_timeout_s=120) as worker:
        edit = request(settings, image, progress=True)  # the progress topic is written too
        await publish(admin, edit)
        await publish(admin, b"not json", key=b"garbage")  # refused: the DLQ topic is written
        answered = {r.request_id: r for r in await results(admin, count=2)}  # the garbage fails too
        assert answered[edit.request_id].status.value == "succeeded", answered[edit.request_id].error
        (dead,) = await dead_letters(admin, count=1)
        assert dead.key == b"garbage"
        assert await read_topic(admin, settings.kafka.progress_topic, count=1)
        assert await wait_for_no_lag(admin) == no_lag(settings)  # the group's commits went through
        assert worker.state.ready, worker.state.not_ready_reason

    wrong = settings.kafka.model_copy(update={"sasl_password": SecretStr("not-the-password")})
    message = await refused(settings.model_copy(update={"kafka": wrong}))
    assert "SaslAuthenticationFailed" in message
    assert "not-the-password" not in message


@pytest.mark.timeout(300)
async def test_a_revoked_request_topic_acl_is_not_ready_loses_nothing_and_resumes_when_restored(
    broker: SecuredKafka, s3_endpoint: str, worker_processes: Callable[..., WorkerProcess]
) -> None:
    settings, admin = secured(broker, s3_endpoint, **scram("acl-drill"))
    store = await prepare(admin)
    broker.grant(worker_acls(settings.kafka, "User:acl-drill"))
    image = stage_image(store, settings, "drill.png", png_bytes(64, 64))
    http_port = free_port()
    worker = worker_processes(settings, "standin:20", http_port=http_port)
    await worker.wait_assigned(timeout_s=120)
    first = request(settings, image)
    await publish(admin, first)
    await results(admin, count=1)
    assert await wait_for_no_lag(admin) == no_lag(settings)  # committed before the ACL goes

    read = Acl("User:acl-drill", "topic", settings.kafka.request_topic, "READ")
    broker.revoke([read])
    (denied,) = await worker.wait_for_event("kafka.access_denied", timeout_s=60)
    assert denied["level"] == "error", denied
    assert denied["denied"] == f"access to topic(s) {settings.kafka.request_topic}"
    status, body = await readyz(http_port)
    assert status == 503
    assert f"denies this worker access to topic(s) {settings.kafka.request_topic}" in body

    held = [request(settings, image) for _ in range(3)]
    for edit in held:
        await publish(admin, edit)
    # While denied: nothing is edited or committed, and the process stays up (no crash loop).
    answered = await read_topic(admin, settings.kafka.result_topic, count=2, timeout_s=8)
    assert len(answered) == 1
    assert sum((await lag(admin)).values()) == len(held)
    assert worker.returncode is None

    broker.grant([read])
    await worker.wait_for_event("kafka.access_restored", timeout_s=90)
    got = await results(admin, count=4, timeout_s=90)
    assert {r.request_id for r in got} == {first.request_id, *(e.request_id for e in held)}
    assert all(r.status.value == "succeeded" for r in got)
    assert await wait_for_no_lag(admin) == no_lag(settings)
    await until(lambda: _ready(http_port), 60, "the worker never became ready again")

    assert len(worker.events("kafka.access_denied")) == 1  # one line for the whole episode
    assert "Traceback" not in worker.log_text()
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(60) == 0


async def _ready(port: int) -> bool:
    return (await readyz(port))[0] == 200


@pytest.mark.timeout(240)
async def test_oauthbearer_tokens_are_validated_by_the_broker(broker: SecuredKafka, s3_endpoint: str) -> None:
    assert broker.oidc is not None
    settings, admin = secured(broker, s3_endpoint, **oauth(broker, "oauth-worker"))
    store = await prepare(admin)
    broker.grant(worker_acls(settings.kafka, "User:oauth-worker"))  # the principal is the JWT's sub
    image = stage_image(store, settings, "oauth.png", png_bytes(64, 64))

    async with running_worker(settings, standin, join_timeout_s=120):
        edit = request(settings, image)
        await publish(admin, edit)
        (result,) = await results(admin, count=1)
        assert result.status.value == "succeeded", result.error
    assert "oauth-worker" in broker.oidc.issued

    for client_id in ("wrong-audience", "forged"):
        bad, _ = secured(broker, s3_endpoint, **oauth(broker, client_id))
        message = await refused(bad)
        assert "SaslAuthenticationFailed" in message, message
        assert "invalid_token" in message
        assert client_id in broker.oidc.issued  # a token was had; the broker refused it
        assert OIDC_CLIENTS[client_id].secret not in message


@pytest.mark.timeout(240)
@pytest.mark.parametrize("withheld", ["group", "topic"])
async def test_an_acl_granted_after_start_up_is_waited_for_without_a_restart(
    broker: SecuredKafka, s3_endpoint: str, withheld: str
) -> None:
    settings, admin = secured(broker, s3_endpoint, **scram("acl-drill"))
    store = await prepare(admin)
    acls = worker_acls(settings.kafka, "User:acl-drill")
    name = settings.kafka.group_id if withheld == "group" else settings.kafka.request_topic
    group = Acl("User:acl-drill", withheld, name, "READ")
    broker.grant([acl for acl in acls if acl != group])
    image = stage_image(store, settings, "late-group.png", png_bytes(64, 64))
    loads = 0

    def load() -> StandInEditor:
        nonlocal loads
        loads += 1
        return standin()

    worker = build_worker(settings, editor_factory=load)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        # Without the group: every poll is refused. Without READ (and so DESCRIBE) on the topic: the
        # group has nothing to assign, and the topic check names the refusal.
        problem = "kafka_access" if withheld == "group" else "topics"

        async def denied() -> bool:
            assert not task.done(), "the worker exited"
            return problem in worker.state.problems

        await until(denied, 90, "the missing ACL was never reported")
        expected = "consumer group" if withheld == "group" else "ACLs deny this worker the topic(s)"
        assert f"{expected} {name}" in worker.state.problems[problem]
        assert not worker.state.ready

        broker.grant([group])
        await publish(admin, request(settings, image))
        (result,) = await results(admin, count=1, timeout_s=90)
        assert result.status.value == "succeeded", result.error

        async def ready() -> bool:
            return worker.state.ready

        await until(ready, 30, f"not ready again: {worker.state.not_ready_reason}")
        assert loads == 1  # no restart: the model was loaded once
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


@pytest.mark.timeout(240)
async def test_a_drain_while_denied_finishes_the_edit_in_flight_and_exits_cleanly(
    broker: SecuredKafka, s3_endpoint: str
) -> None:
    settings, admin = secured(broker, s3_endpoint, **scram("acl-drill"))
    store = await prepare(admin)
    acls = worker_acls(settings.kafka, "User:acl-drill")
    broker.grant(acls)
    image = stage_image(store, settings, "drain.png", png_bytes(64, 64))
    worker = build_worker(settings, editor_factory=lambda: StandInEditor(edit_ms=4000))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: _in_group(worker), 120, "the worker never joined")
        edit = request(settings, image)
        await publish(admin, edit)
        await wait_for_attempt_record(store, settings)  # the edit runs
        read = Acl("User:acl-drill", "topic", settings.kafka.request_topic, "READ")
        broker.revoke([read])

        async def denied() -> bool:
            return "kafka_access" in worker.state.problems

        await until(denied, 30, "the revoked ACL was never reported")
    finally:
        stop.set()  # SIGTERM while denied, with the edit still running
    assert await asyncio.wait_for(task, timeout=60) == EXIT_OK
    (result,) = await results(admin, count=1)
    assert result.request_id == edit.request_id
    assert result.status.value == "succeeded", result.error
    # Its commit needs READ on the topic: refused, so the record stays for the next owner (redone from S3).
    assert sum((await lag(admin)).values()) == 1


async def _in_group(worker: Any) -> bool:
    return bool(worker.state.in_group)

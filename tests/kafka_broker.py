"""Apache Kafka brokers of a test's own with SASL and ACLs, and a local OIDC provider for OAUTHBEARER.

`SecuredKafka` runs scripts/kafka/start (Apache Kafka 4.4.0 from Maven Central's jars, one KRaft node,
no Docker) with two client listeners:

- PLAINTEXT on `admin_bootstrap`: its principal, `User:ANONYMOUS`, is a super user (the node's own
  broker-to-controller traffic uses it too). The tests create topics, publish requests, read results
  and manage ACLs there, as an operator's tooling would.
- SASL_PLAINTEXT on `bootstrap`: SCRAM-SHA-512 (users created when the storage is formatted) and,
  with an `OidcProvider`, OAUTHBEARER validated by the broker itself
  (`OAuthBearerValidatorCallbackHandler`: the JWT's RS256 signature against the provider's JWKS, its
  audience, issuer and expiry). The worker connects here, with only the ACLs a test grants.

`StandardAuthorizer` denies what no ACL allows (`allow.everyone.if.no.acl.found=false`).

Needs java 17+ (and mvn plus Maven Central the first time, for the jars); a missing one is a
`ServiceError` whose message says what to install: tests turn it into a failure, never a skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from consumer.cli.local_services import ServiceError, free_port
from consumer.kafka.settings import KafkaSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START_SCRIPT = PROJECT_ROOT / "scripts" / "kafka" / "start"
SCRAM_MECHANISM = "SCRAM-SHA-512"


# ---------------------------------------------------------------------------------------------------
# ACLs


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule: `principal` may do `operation` (READ, WRITE, DESCRIBE, ...) on a literal resource."""

    principal: str
    resource: str  # topic, group, cluster, transactional_id
    name: str
    operation: str

    def binding(self) -> AclBinding:
        return AclBinding(*self._fields())

    def filter(self) -> AclBindingFilter:
        return AclBindingFilter(*self._fields())

    def _fields(self) -> tuple[Any, ...]:
        return (
            ResourceType[self.resource.upper()],
            self.name,
            ResourcePatternType.LITERAL,
            self.principal,
            "*",
            AclOperation[self.operation.upper()],
            AclPermissionType.ALLOW,
        )


def worker_acls(kafka: KafkaSettings, principal: str) -> list[Acl]:
    """Exactly what a worker with `kafka` needs (docs/operations.md, Kafka ACLs), nothing more.

    READ and WRITE imply DESCRIBE (metadata, offsets, the topic check); WRITE on a topic implies
    IdempotentWrite on the cluster (Kafka 2.8+, KIP-679), so the idempotent producer needs no cluster
    ACL. No CREATE: the worker never creates topics (`kafka.create_topics` is off in production).
    """
    acls = [Acl(principal, "topic", topic, "READ") for topic in kafka.request_topics]
    acls.append(Acl(principal, "topic", kafka.control_topic, "READ"))
    acls += [
        Acl(principal, "topic", topic, "WRITE")
        for topic in (kafka.result_topic, kafka.progress_topic, kafka.dlq_topic)
    ]
    acls.append(Acl(principal, "group", kafka.group_id, "READ"))
    return acls


# ---------------------------------------------------------------------------------------------------
# A local OIDC provider: client-credentials token endpoint and JWKS


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class OidcClient:
    """A client of the provider and what its tokens say (a test's way to mint a bad one)."""

    secret: str
    audience: str | None = None  # None: the provider's audience
    forged: bool = False  # signed with a key that is not in the JWKS (same key id)
    lifetime_s: int = 3600


@dataclass
class OidcProvider:
    """`POST /token` (RFC 6749 §4.4 client credentials, `client_secret_post`) answers an RS256 JWT whose
    `sub` is the client id; `GET /jwks` publishes the public key. On 127.0.0.1, in a thread (the broker
    fetches the JWKS while the test's event loop may be blocked)."""

    audience: str = "klein-edit-kafka"
    clients: dict[str, OidcClient] = field(default_factory=dict)
    key_id: str = "klein-edit-test-1"
    port: int = 0
    issued: list[str] = field(default_factory=list)  # client ids, one per token issued

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    def jwks(self) -> dict[str, Any]:
        public = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.key_id}
        return {"keys": [{**key, "n": _uint(public.n), "e": _uint(public.e)}]}

    def mint(self, client_id: str) -> str:
        client = self.clients[client_id]
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key_id}
        claims = {
            "iss": self.issuer,
            "sub": client_id,
            "aud": client.audience or self.audience,
            "iat": now,
            "exp": now + client.lifetime_s,
            "scope": "kafka",
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        key = self._forger if client.forged else self._key
        signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/jwks":
                    self._answer(200, provider.jwks())
                else:
                    self._answer(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                client = provider.clients.get(form.get("client_id", ""))
                if self.path != "/token" or form.get("grant_type") != "client_credentials":
                    self._answer(400, {"error": "invalid_request"})
                elif client is None or form.get("client_secret") != client.secret:
                    self._answer(401, {"error": "invalid_client"})
                else:
                    provider.issued.append(form["client_id"])
                    token = provider.mint(form["client_id"])
                    self._answer(
                        200, {"access_token": token, "token_type": "Bearer", "expires_in": client.lifetime_s}
                    )

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ---------------------------------------------------------------------------------------------------
# The broker


class SecuredKafka:
    """One Apache Kafka node with a super-user PLAINTEXT listener and a SASL listener (module docstring).

    `scram_users` maps user name to password (SCRAM-SHA-512); `oidc` adds OAUTHBEARER.
    """

    def __init__(self, scram_users: dict[str, str], oidc: OidcProvider | None = None) -> None:
        self.scram_users = scram_users
        self.oidc = oidc
        self.admin_port, self.sasl_port, self.controller_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.mkdtemp(prefix="klein-edit-kafka-sasl-")
        self.log_path = os.path.join(self._logdir, "broker.log")
        self._admin: AdminClient | None = None

    @property
    def admin_bootstrap(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def server_properties(self) -> str:
        mechanisms = [SCRAM_MECHANISM] + (["OAUTHBEARER"] if self.oidc else [])
        prefix = "listener.name.sasl_plaintext"
        lines = [
            f"listeners=PLAINTEXT://{self.admin_bootstrap},CONTROLLER://127.0.0.1:{self.controller_port},"
            f"SASL_PLAINTEXT://{self.bootstrap}",
            f"advertised.listeners=PLAINTEXT://{self.admin_bootstrap},SASL_PLAINTEXT://{self.bootstrap}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            f"sasl.enabled.mechanisms={','.join(mechanisms)}",
            f"{prefix}.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
        ]
        if self.oidc is not None:
            lines += [
                f"{prefix}.oauthbearer.sasl.jaas.config="
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
                f"{prefix}.oauthbearer.sasl.server.callback.handler.class="
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler",
                f"sasl.oauthbearer.jwks.endpoint.url={self.oidc.jwks_url}",
                f"sasl.oauthbearer.expected.audience={self.oidc.audience}",
                f"sasl.oauthbearer.expected.issuer={self.oidc.issuer}",
            ]
        return "\n".join(lines)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        env["KAFKA_SERVER_PROPERTIES"] = self.server_properties()
        env["KAFKA_SCRAM_CREDENTIALS"] = "\n".join(
            f"{SCRAM_MECHANISM}=[name={user},password={password}]"
            for user, password in self.scram_users.items()
        )
        if self.oidc is not None:
            # Kafka 4 fetches OAuth URLs only when this JVM property lists them.
            jvm = env.get("KAFKA_JVM_OPTS", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
            allowed = f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={self.oidc.jwks_url}"
            env["KAFKA_JVM_OPTS"] = f"{jvm} {allowed}"
        return env

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the node and wait until it serves; `ServiceError` with the reason otherwise."""
        for tool in ("java", "bash"):
            if shutil.which(tool) is None:
                raise ServiceError(
                    f"{tool} not found on PATH: the SASL/ACL tests run Apache Kafka from "
                    "scripts/kafka/start, which needs a JDK 17+ "
                    "(Debian: apt-get install openjdk-17-jre-headless maven)"
                )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(START_SCRIPT), str(self.admin_port), os.path.join(self._logdir, "node")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
            )
        deadline = time.monotonic() + timeout_s
        while "Kafka Server started" not in self.log():
            if self.process.poll() is not None:
                raise ServiceError(
                    f"scripts/kafka/start exited with {self.process.returncode}:\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                tail = self.log()[-3000:]
                self.stop()
                raise ServiceError(f"Apache Kafka did not start in {timeout_s:.0f} s:\n{tail}")
            time.sleep(0.2)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self._logdir, ignore_errors=True)

    # -- administration, as the super user ------------------------------------------------------------

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.admin_bootstrap})
        return self._admin

    def grant(self, acls: Iterable[Acl]) -> None:
        """Create `acls` and return once the broker's authorizer holds them (they reach it through the
        metadata log, a moment after the controller accepted them)."""
        acls = list(acls)
        for future in self.admin.create_acls([acl.binding() for acl in acls]).values():
            future.result(timeout=30)
        self._until_held(acls, held=True)

    def revoke(self, acls: Iterable[Acl]) -> None:
        """Delete `acls`; returns once the broker's authorizer no longer holds them."""
        acls = list(acls)
        for future in self.admin.delete_acls([acl.filter() for acl in acls]).values():
            future.result(timeout=30)
        self._until_held(acls, held=False)

    def _until_held(self, acls: list[Acl], *, held: bool, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for principal in {acl.principal for acl in acls}:
            wanted = {acl for acl in acls if acl.principal == principal}
            while not self._held(principal, wanted, held):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ACLs {sorted(map(str, wanted))} not {'held' if held else 'gone'}")
                time.sleep(0.1)

    def _held(self, principal: str, wanted: set[Acl], held: bool) -> bool:
        now = self.acls_of(principal)
        return wanted <= now if held else not wanted & now

    def acls_of(self, principal: str) -> set[Acl]:
        """Every ACL of `principal` on the cluster, as the authorizer holds them."""
        any_filter = AclBindingFilter(
            ResourceType.ANY,
            None,
            ResourcePatternType.ANY,
            principal,
            None,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        found = self.admin.describe_acls(any_filter).result(timeout=30)
        return {
            Acl(b.principal, b.restype.name.lower(), b.name, b.operation.name)
            for b in found
            if b.permission_type == AclPermissionType.ALLOW
        }


@contextlib.contextmanager
def secured_kafka(scram_users: dict[str, str], oidc: OidcProvider | None = None) -> Iterator[SecuredKafka]:
    """A started `SecuredKafka` (and its `oidc` provider, started first: the broker reads its JWKS)."""
    if oidc is not None:
        oidc.start()
    broker = SecuredKafka(scram_users, oidc)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        if oidc is not None:
            oidc.stop()

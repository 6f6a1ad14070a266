"""/startupz, /livez, /readyz and /metrics over aiohttp's low-level HTTP server, on the worker's event loop.

Running on the event loop is the point of /livez: if the loop is blocked, the probe times out and
Kubernetes restarts the pod. The port is also what a scanner or a misbehaving client reaches first, so
nothing a client does may hold the server or flood the log:

- request line and header lines are capped at `MAX_LINE_BYTES`, header count at `MAX_HEADERS`
  (aiohttp's parser answers 400 or 431);
- each connection lives at most `REQUEST_DEADLINE_S` from accept to the end of its one response (no
  keep-alive): a client that trickles its headers (slowloris) is cut off at the deadline;
- at most `MAX_CONNECTIONS` connections are open; a new one evicts the oldest, so slow clients can
  never lock a probe out (a probe's request is answered within a millisecond of arriving);
- GET and HEAD are served; other methods get 405 with `Allow`;
- malformed requests are logged as one line without a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from consumer.http.metrics import WorkerMetrics
from consumer.http.readiness import WorkerState

REQUEST_DEADLINE_S = 5.0  # the probes' timeoutSeconds in the chart; a healthy request takes ~1 ms
MAX_CONNECTIONS = 64  # kubelet's probes and one Prometheus scrape need a handful
MAX_LINE_BYTES = 4096  # the request line and each header line
MAX_HEADERS = 32

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ALLOWED = ("GET", "HEAD")


class PortUnavailable(OSError):
    """The health endpoint's `host:port` cannot be bound (in use, or not allowed); `port` is the port."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port


class HealthServer:
    """The worker's HTTP endpoint. `start()` binds `host:port` (port 0 picks a free one) and raises
    `PortUnavailable` when it cannot."""

    def __init__(
        self,
        state: WorkerState,
        metrics: WorkerMetrics,
        *,
        host: str,
        port: int,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._state = state
        self._metrics = metrics
        self._host = host
        self._port = port
        self._deadline_s = request_deadline_s
        self._max_connections = max_connections
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        if self._runner is None or not self._runner.addresses:
            return self._port
        port: int = self._runner.addresses[0][1]
        return port

    async def start(self) -> None:
        server = _GuardedServer(
            self._handle,
            deadline_s=self._deadline_s,
            max_connections=self._max_connections,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            access_log=None,
            logger=_client_error_logger(),
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, backlog=self._max_connections)
        try:
            await self._site.start()
        except OSError as exc:
            await self.stop()
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise PortUnavailable(self._host, self._port, reason) from exc

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request; HEAD is answered as GET (the body is not sent)."""
        if method not in _ALLOWED:
            return 405, "text/plain", b"only GET and HEAD\n"
        path = path.split("?", 1)[0]
        if path == "/livez":
            ok = self._state.alive
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"consume loop stopped\n"
        if path == "/startupz":
            # Started once the model is loaded and warmed: from then on liveness and readiness judge
            # the pod, so a Kafka outage makes it unready, never restarted (which would reload the model).
            if self._state.model_ready:
                return 200, "text/plain", b"started\n"
            return 503, "text/plain", b"not started: model loading\n"
        if path == "/readyz":
            if self._state.ready:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {self._state.not_ready_reason}\n".encode()
        if path == "/metrics":
            return 200, METRICS_CONTENT_TYPE, self._metrics.render()
        return 404, "text/plain", b"not found\n"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        status, content_type, body = self.respond(request.method, request.path)
        response = web.Response(status=status, body=body, headers={"Content-Type": content_type})
        if status == 405:
            response.headers["Allow"] = ", ".join(_ALLOWED)
        response.force_close()  # one request per connection: the deadline then bounds the request
        return response


class _GuardedServer(web.Server):
    """aiohttp's server with a per-connection deadline and a cap that evicts the oldest connection."""

    def __init__(self, handler: Any, *, deadline_s: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._deadline_s = deadline_s
        self._max_connections = max_connections
        self._open: OrderedDict[web.RequestHandler, tuple[asyncio.Transport, asyncio.TimerHandle]] = (
            OrderedDict()
        )

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        timer = asyncio.get_running_loop().call_later(self._deadline_s, transport.abort)
        self._open[handler] = (transport, timer)
        while len(self._open) > self._max_connections:
            _, (oldest, oldest_timer) = self._open.popitem(last=False)
            oldest_timer.cancel()
            oldest.abort()

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        opened = self._open.pop(handler, None)
        if opened is not None:
            opened[1].cancel()
        super().connection_lost(handler, exc)


class _OneLineForClientErrors(logging.Filter):
    """A malformed request is the client's problem: one line at INFO (when enabled), no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {type(exc).__name__} {exc.code}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def _client_error_logger() -> logging.Logger:
    logger = logging.getLogger("klein_edit.http")
    if not any(isinstance(f, _OneLineForClientErrors) for f in logger.filters):
        logger.addFilter(_OneLineForClientErrors())
    return logger

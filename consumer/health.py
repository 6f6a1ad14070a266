"""/livez, /readyz and /metrics over a minimal HTTP/1.1 server on the event loop.

It needs no framework: three GET routes answered from in-memory state. Running on the event loop is
the point of /livez: if the loop is blocked, the probe times out and Kubernetes restarts the pod.
"""

from __future__ import annotations

import asyncio
import contextlib

from consumer.metrics import WorkerMetrics
from consumer.worker import WorkerState

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    def __init__(self, state: WorkerState, metrics: WorkerMetrics, *, host: str, port: int) -> None:
        self._state = state
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"only GET\n"
        path = path.split("?", 1)[0]
        if path == "/livez":
            ok = self._state.alive
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"consume loop stopped\n"
        if path == "/readyz":
            if self._state.ready:
                return 200, "text/plain", b"ready\n"
            why = (
                "model loading"
                if not self._state.model_ready
                else ("draining" if self._state.draining else "not in the consumer group yet")
            )
            return 503, "text/plain", f"not ready: {why}\n".encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics.render()
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5.0)
            while (await asyncio.wait_for(reader.readline(), timeout=5.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                return
            status, content_type, body = self.respond(parts[0], parts[1])
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

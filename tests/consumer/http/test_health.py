"""The health server: what /livez, /readyz and /metrics answer (`HealthServer.respond`, over a real
WorkerState and WorkerMetrics), and how the running server's socket stands up to slow, oversized and
malformed clients (raw asyncio streams against the bound port, as a scanner would probe it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from consumer.gpu import GpuThread
from consumer.http.health import MAX_CONNECTIONS, REQUEST_DEADLINE_S, HealthServer
from consumer.http.metrics import WorkerMetrics
from consumer.worker import WorkerState
from schemas.results import Cost, EditCompleted, EditStatus, Timing


@pytest.fixture
def state() -> WorkerState:
    return WorkerState()


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def server(state: WorkerState, metrics: WorkerMetrics) -> HealthServer:
    return HealthServer(state, metrics, host="127.0.0.1", port=0)


def ready(state: WorkerState) -> None:
    state.model_ready = True
    state.in_group = True
    state.draining = False
    state.last_loop_at = time.monotonic()


# --- /livez ----------------------------------------------------------------------------------------


def test_livez_ok_for_a_fresh_worker(server: HealthServer) -> None:
    assert server.respond("GET", "/livez") == (200, "text/plain", b"ok\n")


def test_livez_ok_while_the_loop_turns(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    assert server.respond("GET", "/livez")[0] == 200


async def test_livez_fails_when_an_edit_runs_past_the_edit_timeout(
    server: HealthServer, state: WorkerState
) -> None:
    gpu = GpuThread()
    release = threading.Event()
    try:
        ready(state)
        state.gpu, state.edit_timeout_s = gpu, 1.0
        job = asyncio.create_task(gpu.run(release.wait, 10))
        while not gpu.running:
            await asyncio.sleep(0.005)
        assert server.respond("GET", "/livez")[0] == 200  # running, but not for long yet
        await asyncio.sleep(1.2)
        state.last_loop_at = time.monotonic()
        assert server.respond("GET", "/livez")[0] == 503  # a hung kernel: restart the pod
        release.set()
        await job
        assert server.respond("GET", "/livez")[0] == 200
    finally:
        release.set()
        gpu.shutdown(wait=True)


def test_livez_fails_when_the_loop_stalls(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    state.last_loop_at = time.monotonic() - 120
    assert server.respond("GET", "/livez") == (503, "text/plain", b"consume loop stopped\n")


async def test_livez_fails_when_the_consume_task_ended(server: HealthServer, state: WorkerState) -> None:
    async def consume() -> None:
        return None

    state.consume_task = asyncio.create_task(consume())
    await state.consume_task
    assert server.respond("GET", "/livez")[0] == 503


async def test_livez_ok_while_the_consume_task_runs(server: HealthServer, state: WorkerState) -> None:
    task = asyncio.create_task(asyncio.sleep(10))
    state.consume_task = task
    try:
        assert server.respond("GET", "/livez")[0] == 200
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- /startupz -------------------------------------------------------------------------------------


def test_startupz_passes_once_the_model_is_loaded_whatever_kafka_does(
    server: HealthServer, state: WorkerState
) -> None:
    assert server.respond("GET", "/startupz") == (503, "text/plain", b"not started: model loading\n")
    state.model_ready = True
    state.problems["kafka"] = "cannot reach Kafka at kafka:9092 for 600 s"
    assert server.respond("GET", "/startupz") == (200, "text/plain", b"started\n")
    assert server.respond("GET", "/readyz")[0] == 503  # unready, never restarted for it


# --- /readyz ---------------------------------------------------------------------------------------


def test_readyz_503_before_the_model_is_ready(server: HealthServer, state: WorkerState) -> None:
    state.in_group = True
    assert server.respond("GET", "/readyz") == (503, "text/plain", b"not ready: model loading\n")


def test_readyz_503_before_joining_the_group(server: HealthServer, state: WorkerState) -> None:
    state.model_ready = True
    assert server.respond("GET", "/readyz") == (
        503,
        "text/plain",
        b"not ready: not in the consumer group (joining, or a rebalance is under way)\n",
    )


def test_readyz_200_when_ready(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    assert server.respond("GET", "/readyz") == (200, "text/plain", b"ready\n")


def test_readyz_503_while_draining(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    state.draining = True
    assert server.respond("GET", "/readyz") == (503, "text/plain", b"not ready: draining\n")


def test_readyz_503_names_each_problem_and_recovers(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    state.problems["control"] = "control reader stalled 12 s: KafkaConnectionError"
    assert server.respond("GET", "/readyz") == (
        503,
        "text/plain",
        b"not ready: control: control reader stalled 12 s: KafkaConnectionError\n",
    )
    state.problems.clear()
    assert server.respond("GET", "/readyz")[0] == 200


def test_readyz_follows_the_lifecycle(server: HealthServer, state: WorkerState) -> None:
    codes = [server.respond("GET", "/readyz")[0]]
    state.model_ready = True
    codes.append(server.respond("GET", "/readyz")[0])
    state.in_group = True
    codes.append(server.respond("GET", "/readyz")[0])
    state.draining = True
    codes.append(server.respond("GET", "/readyz")[0])
    assert codes == [503, 503, 200, 503]


def test_query_strings_are_ignored(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    assert server.respond("GET", "/readyz?verbose=1")[0] == 200
    assert server.respond("GET", "/livez?x")[0] == 200


# --- /metrics --------------------------------------------------------------------------------------


def test_metrics_exposes_the_worker_registry(server: HealthServer) -> None:
    status, content_type, body = server.respond("GET", "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    for name in (
        "klein_edit_in_flight",
        "klein_edit_gpu_busy_ratio",
        "klein_edit_model_load_seconds",
        "# TYPE klein_edit_edits_total counter",
        "# TYPE klein_edit_stage_seconds histogram",
    ):
        assert name in text


def test_metrics_reflect_observed_results(server: HealthServer, metrics: WorkerMetrics) -> None:
    metrics.in_flight.set(3)
    metrics.observe_result(
        EditCompleted(
            request_id="req-1",
            status=EditStatus.SUCCEEDED,
            cost=Cost.for_output(width=1000, height=1000, input_megapixels=1.0, usd_per_megapixel=0.002),
            timing_ms=Timing(inference=1500.0, total=2000.0),
            model="tiny-random",
            attempt=1,
            worker="w",
            completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    text = server.respond("GET", "/metrics")[2].decode()
    assert "klein_edit_in_flight 3.0" in text
    assert 'klein_edit_edits_total{code="",status="succeeded"} 1.0' in text
    assert "klein_edit_billed_megapixels_total 1.0" in text
    assert "klein_edit_billed_usd_total 0.002" in text
    assert 'klein_edit_stage_seconds_count{stage="inference"} 1.0' in text
    assert 'klein_edit_stage_seconds_sum{stage="inference"} 1.5' in text
    # The end-to-end time has a histogram of its own, so summing the stages never counts it twice.
    assert "klein_edit_end_to_end_seconds_sum 2.0" in text
    assert "klein_edit_end_to_end_seconds_count 1.0" in text
    assert 'stage="total"' not in text


def test_gpu_memory_is_two_gauges(metrics: WorkerMetrics) -> None:
    metrics.observe_gpu_memory({"allocated_bytes": 3e9, "peak_bytes": 5e9})
    text = metrics.render().decode()
    assert "klein_edit_gpu_memory_allocated_bytes 3e+09" in text
    assert "klein_edit_gpu_memory_peak_bytes 5e+09" in text
    assert "kind=" not in text


def test_recompiles_after_ready_is_a_gauge(metrics: WorkerMetrics) -> None:
    metrics.observe_recompiles(2)
    assert "klein_edit_recompiles_after_ready 2.0" in metrics.render().decode()


def test_build_info_and_the_standard_collectors() -> None:
    text = WorkerMetrics(model="black-forest-labs/FLUX.2-klein-base-9B", model_revision="abc123").render()
    lines = text.decode().splitlines()
    (info,) = [line for line in lines if line.startswith("klein_edit_build_info{")]
    assert 'model="black-forest-labs/FLUX.2-klein-base-9B"' in info
    assert 'revision="abc123"' in info
    assert 'version="' in info
    assert info.endswith(" 1.0")
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert any(line.startswith("process_open_fds ") for line in lines)
    assert any(line.startswith("python_info{") for line in lines)
    assert 'revision="unpinned"' in WorkerMetrics().render().decode()


def test_each_worker_has_its_own_registry() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.in_flight.set(7)
    assert b"klein_edit_in_flight 7.0" in a.render()
    assert b"klein_edit_in_flight 0.0" in b.render()


# --- other paths and methods -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/health", "/livez/", "/readyzz", "/metrics/x", ""])
def test_unknown_paths_are_404(server: HealthServer, path: str) -> None:
    assert server.respond("GET", path) == (404, "text/plain", b"not found\n")


def test_head_is_answered_as_get(server: HealthServer, state: WorkerState) -> None:
    ready(state)
    for path in ("/livez", "/readyz", "/nope"):
        assert server.respond("HEAD", path) == server.respond("GET", path)
    # /metrics includes process counters (CPU seconds, memory) that move between two renders.
    head, get = server.respond("HEAD", "/metrics"), server.respond("GET", "/metrics")
    assert head[:2] == get[:2]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get"])
@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/nope"])
def test_other_methods_are_405(server: HealthServer, method: str, path: str) -> None:
    assert server.respond(method, path) == (405, "text/plain", b"only GET and HEAD\n")


def test_port_before_start_is_the_configured_one(state: WorkerState, metrics: WorkerMetrics) -> None:
    assert HealthServer(state, metrics, host="127.0.0.1", port=18080).port == 18080


# --- the running server's socket -----------------------------------------------------------------


@pytest.fixture
async def port(server: HealthServer) -> AsyncIterator[int]:
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop()


async def exchange(port: int, raw: bytes, *, timeout_s: float = 5.0) -> bytes:
    """Send `raw`, read until the server closes; what a client on the socket sees."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_get_and_head_over_the_socket(port: int, state: WorkerState) -> None:
    ready(state)
    got = await exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert got.endswith(b"\r\n\r\nready\n")
    assert b"Connection: close" in got  # one request per connection: the deadline bounds it
    head = await exchange(port, b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 6\r\n" in head
    assert head.endswith(b"\r\n\r\n")  # the headers of GET, no body
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in metrics
    assert b"klein_edit_in_flight" in metrics


async def test_other_methods_get_405_with_allow(port: int) -> None:
    got = await exchange(port, b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status_of(got) == 405
    assert b"Allow: GET, HEAD\r\n" in got


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="64KiB-request-line"),
        pytest.param(b"GET /livez HTTP/1.1\r\nX-Big: " + b"y" * 65536 + b"\r\n\r\n", id="64KiB-header"),
        pytest.param(
            b"GET /livez HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
            id="200-headers",
        ),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
    ],
)
async def test_oversized_or_malformed_requests_get_400_and_one_log_line(
    port: int, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        got = await exchange(port, raw)
        assert status_of(got) in (400, 431)
        # The server is fine afterwards.
        assert status_of(await exchange(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


async def test_a_slowloris_client_is_cut_off_at_the_deadline(port: int) -> None:
    """One header line every 2 s would hold a naive server forever; here the deadline ends it."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /livez HTTP/1.1\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(10):
                await asyncio.sleep(2.0)
                writer.write(b"X-Slow-%d: y\r\n" % i)
                await writer.drain()

    trickler = asyncio.create_task(trickle())
    received = b""
    with contextlib.suppress(ConnectionError):
        received = await asyncio.wait_for(reader.read(), 25.0)
    elapsed = time.monotonic() - started
    trickler.cancel()
    writer.close()
    assert received == b""  # never answered
    assert REQUEST_DEADLINE_S - 0.1 <= elapsed < REQUEST_DEADLINE_S + 1.5, elapsed  # was 14 s and a 200


async def test_slow_connections_are_capped_and_livez_still_answers_promptly(port: int) -> None:
    slow = []
    for _ in range(300):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /livez HTTP/1.1\r\nX-Slow: ")  # and never more
        slow.append((reader, writer))
    try:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        got = await exchange(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(got) == 200
        assert time.monotonic() - started < 1.0

        async def closed(reader: asyncio.StreamReader) -> bool:
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(), 0.5)
                return True
            return reader.at_eof()

        dropped = sum(await asyncio.gather(*(closed(r) for r, _ in slow)))
        assert dropped >= 300 - MAX_CONNECTIONS  # the oldest were evicted, not all 300 held
    finally:
        for _, writer in slow:
            writer.close()

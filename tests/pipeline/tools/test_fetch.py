"""fetch_model error mapping, offline: an unreachable endpoint and a local server answering 401."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.errors import ModelLoadError
from pipeline.tools.fetch import fetch_model

MODEL = "black-forest-labs/FLUX.2-klein-base-9B"


def serve(headers: dict[str, str], status: int) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            body = b'{"error": "denied"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gated_hub() -> Iterator[str]:
    yield from serve({"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, 401)


@pytest.fixture
def unauthorised_hub() -> Iterator[str]:
    yield from serve({}, 401)


def test_unreachable_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot reach the Hub") as info:
        fetch_model(MODEL, cache_dir=str(tmp_path), token=None, revision=None, endpoint="http://127.0.0.1:9")
    assert "run fetch-model again" in str(info.value)


def test_gated_model(tmp_path: Path, gated_hub: str) -> None:
    with pytest.raises(ModelLoadError, match=r"the model is gated \(401\): accept its licence") as info:
        fetch_model(MODEL, cache_dir=str(tmp_path), token="hf_wrong", revision=None, endpoint=gated_hub)
    assert "HF_TOKEN" in str(info.value)


def test_unauthorised_names_the_likely_cause(tmp_path: Path, unauthorised_hub: str) -> None:
    with pytest.raises(ModelLoadError, match="401") as info:
        fetch_model(MODEL, cache_dir=str(tmp_path), token=None, revision="main", endpoint=unauthorised_hub)
    assert "gated" in str(info.value)
    assert "HF_TOKEN" in str(info.value)

"""A local https origin on loopback for the URL-input tests: an aiohttp server with a test certificate
(`tests.tls`), routes for each case the fetcher must handle, and counts of what it was asked.

Routes: `/files/<name>` serves `files[name]` with an ETag (304 to a matching If-None-Match); `/status/<code>`
answers that status; `/sized/<n>` n bytes with a Content-Length; `/chunked/<n>` n bytes with none;
`/slow` some bytes then silence; `/redirect?to=<url>` a 302 there; `/loop` a 302 to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter

from aiohttp import web

from tests.tls import TlsFiles


class HttpsOrigin:
    def __init__(self, tls: TlsFiles) -> None:
        self._tls = tls
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()  # path -> requests that reached the server
        self.not_modified: Counter[str] = Counter()  # path -> answered 304
        self.queries: list[str] = []  # raw query strings, in order
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/sized/{n}", self._sized)
        app.router.add_get("/chunked/{n}", self._chunked)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/loop", self._loop)
        app.middlewares.append(self._count)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls.server_context())
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.port}{path}"

    @web.middleware
    async def _count(self, request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.queries.append(request.query_string)
        return await handler(request)

    async def _file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified[request.path] += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=data, headers={"ETag": etag}, content_type="application/octet-stream")

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def _sized(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        remaining = int(request.match_info["n"])
        while remaining > 0:
            part = min(remaining, 500)
            await response.write(b"x" * part)
            remaining -= part
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "800"})
        await response.prepare(request)
        await response.write(b"x" * 400)
        # Silence until the origin stops (the client's read timeout ends the read long before).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=10)
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        # The Location as given, malformed or not (HTTPFound would parse it).
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def _loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

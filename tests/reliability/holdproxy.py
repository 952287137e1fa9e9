"""A fault layer between the engine and the emulator: every call passes, creates can be held.

``HoldingProxy`` forwards each request to the emulator unchanged, except that the first
``holds`` ``POST /v1/batches`` requests (every one when ``holds`` is None) wait ``hold_s``
before they are forwarded, and are forwarded even when the client gave up meanwhile: a create
held on the network that lands after the engine's timeout.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import aiohttp
from aiohttp import web

__all__ = ["HoldingProxy"]

_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class HoldingProxy:
    """Forward to ``upstream`` (an emulator base URL ending in /v1); hold batch creates."""

    def __init__(self, upstream: str, hold_s: float, holds: int | None = None) -> None:
        self._upstream = upstream.rstrip("/").removesuffix("/v1")
        self._hold_s = hold_s
        self._holds = holds
        self.held = 0
        self.base_url = ""
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._landing: set[asyncio.Task[tuple[int, bytes, str]]] = set()

    async def __aenter__(self) -> HoldingProxy:
        """Start listening on a free local port."""
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=1 << 28)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Let held creates land, then stop."""
        await asyncio.gather(*self._landing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes, hold_s: float
    ) -> tuple[int, bytes, str]:
        """Send one request upstream after ``hold_s``; return status, body, content type."""
        await asyncio.sleep(hold_s)
        assert self._session is not None
        async with self._session.request(
            method, self._upstream + path, headers=headers, data=body
        ) as resp:
            return resp.status, await resp.read(), resp.content_type

    async def _handle(self, request: web.Request) -> web.Response:
        """Forward one request; a held create goes on even if its client has gone."""
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        hold = 0.0
        if request.method == "POST" and request.path == "/v1/batches" and (
            self._holds is None or self.held < self._holds
        ):
            self.held += 1
            hold = self._hold_s
        task = asyncio.create_task(
            self._forward(request.method, request.path_qs, headers, body, hold)
        )
        self._landing.add(task)
        task.add_done_callback(self._landing.discard)
        status, content, ctype = await asyncio.shield(task)
        return web.Response(status=status, body=content, content_type=ctype)

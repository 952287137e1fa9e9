"""A fault layer between the engine and the emulator: an HTTP proxy that damages downloads.

Every request is forwarded to the emulator unchanged; answers go back with ``Connection:
close`` (one request per connection, so a body may end at EOF with no length). A download of
a file's content (``GET /v1/files/{id}/content``) can be damaged the ways seen in the field,
each a transfer that looks clean to the client:

- ``short``: the first half of the lines, with a Content-Length equal to the short body;
- ``no_length``: the same cut, no Content-Length, the connection closed at the end;
- ``half_line``: the last line cut in the middle, Content-Length equal to what is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from engine.emulator import Emulator

# (file id, n-th download of that file counting from 1) -> damage mode, or None for none.
Damage = Callable[[str, int], str | None]
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                "content-encoding"}


def cut(body: bytes, mode: str) -> bytes:
    """Return the damaged body for one of the modes above."""
    lines = body.splitlines(keepends=True)
    if mode in ("short", "no_length"):
        return b"".join(lines[: len(lines) // 2])
    if mode == "half_line":
        last = lines[-1]
        return b"".join(lines[:-1]) + last[: len(last) // 2]
    raise ValueError(f"unknown damage mode {mode!r}")


class ApiProxy:
    """Forwards 127.0.0.1:<port>/v1 to the emulator and damages downloads on request."""

    def __init__(self, upstream_base_url: str, damage: Damage) -> None:
        parts = urlsplit(upstream_base_url)
        self._upstream = f"{parts.scheme}://{parts.netloc}"
        self.damage = damage
        self.downloads: Counter[str] = Counter()
        self.damaged: Counter[str] = Counter()  # mode -> downloads damaged
        self.port = 0
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The URL to give the engine (OPENAI_BASE_URL)."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ApiProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip()] = value.strip()
            lowered = {k.lower(): v for k, v in headers.items()}
            if lowered.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
            else:
                body = await reader.readexactly(int(lowered.get("content-length", "0")))
            await self._answer(writer, method, target, headers, body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, target: str,
                      headers: dict[str, str], body: bytes) -> None:
        assert self._session is not None
        forward = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(method, self._upstream + target, headers=forward,
                                         data=body or None) as resp:
            status, reason = resp.status, resp.reason or ""
            content = await resp.read()
            content_type = resp.headers.get("Content-Type", "application/octet-stream")
        mode = None
        path = urlsplit(target).path
        if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            file_id = path.split("/")[3]
            self.downloads[file_id] += 1
            mode = self.damage(file_id, self.downloads[file_id]) if status == 200 else None
        if mode is not None:
            content = cut(content, mode)
            self.damaged[mode] += 1
        out = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
               "Connection: close"]
        if mode != "no_length":
            out.append(f"Content-Length: {len(content)}")
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + content)
        await writer.drain()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """Read a chunked request body."""
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def answered_twice(emu: Emulator) -> dict[str, int]:
    """Source keys the emulator answered more than once (any attempt), with how often.

    Counted from the emulator's own record of processed lines, so a row re-sent after a
    short download shows up even when the engine believes it applied it once.
    """
    answered: Counter[str] = Counter()
    for batch in emu.record.batches.values():
        if batch.status in ("completed", "expired", "cancelled"):
            answered.update(cid.split("|", 2)[2] for cid in set(batch.custom_ids))
    return {key: n for key, n in answered.items() if n > 1}

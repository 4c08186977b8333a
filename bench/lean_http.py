"""A lean HTTP/1.1 client for the latency benchmarks: one keep-alive connection, JSON in and out.

On two cores the client shares the machine with the server, so its own work lands in every figure:
at one customer httpx spent about 3.5 ms and aiohttp about 2 ms of a ~26 ms turn on parsing and
bookkeeping (measured against this client, taking turns on the same server), time no API overhead
ratio should be charged for; under load it also takes CPU from the server. This client writes the
request bytes and reads the status line, the headers and a ``Content-Length`` body, nothing more.
It is for our own server's JSON replies: a chunked or unsized body is refused with a clear error.

Errors: ``LeanHTTPError`` for a response it cannot read (connection closed, no length).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class LeanHTTPError(RuntimeError):
    """A response this client cannot read."""


@dataclass(frozen=True)
class LeanResponse:
    """Status, headers (names lower-cased) and body of one response."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.content)


class LeanConnection:
    """One keep-alive connection to ``base`` (``http://host:port``), requests one after another."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:  # noqa: D107
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"need http://host:port, got {base!r}")
        self.host, self.port = parts.hostname, parts.port
        fixed = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json", **(headers or {})}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LeanConnection:  # noqa: D105
        await self._open()
        return self

    async def __aexit__(self, *_: object) -> None:  # noqa: D105
        await self._close()

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
        self._reader = self._writer = None

    async def post(self, path: str, json_body: Any) -> LeanResponse:
        """POST ``json_body`` as JSON to ``path`` and read the whole response."""
        if self._reader is None or self._writer is None:
            await self._open()  # the server said "Connection: close" after the last response
        assert self._reader is not None and self._writer is not None
        body = json.dumps(json_body, ensure_ascii=False).encode()
        head = f"POST {path} HTTP/1.1\r\n{self._fixed}Content-Length: {len(body)}\r\n\r\n"
        self._writer.write(head.encode("latin-1") + body)
        await self._writer.drain()
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise LeanHTTPError(f"the server closed the connection before answering POST {path}") from exc
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise LeanHTTPError(f"not an HTTP/1.x status line: {status_line!r}")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise LeanHTTPError(
                f"POST {path}: a response without a Content-Length (transfer-encoding "
                f"{headers.get('transfer-encoding', 'none')!r}) is not read by this client"
            )
        try:
            content = await self._reader.readexactly(int(length))
        except asyncio.IncompleteReadError as exc:
            got = len(exc.partial)
            raise LeanHTTPError(f"POST {path}: the body ended after {got} of {length} bytes") from exc
        if headers.get("connection", "").lower() == "close":
            await self._close()
        return LeanResponse(int(rest[:3]), headers, content)

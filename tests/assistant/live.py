"""Test seams for live events: the production app under a real uvicorn, and a server-sent event reader
that collects a stream in a background thread (Starlette's TestClient buffers whole responses, so
streams that stay open need a real server)."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from assistant.api.app import create_app
from assistant.api.deps import Services
from assistant.db import Database
from assistant.keys import issue_key
from assistant.settings import Settings
from tests.assistant.seams import MovableClock, free_port, uvicorn_in_thread


@dataclass
class Event:
    """One server-sent event."""

    name: str
    data: Any
    id: str | None


class EventReader:
    """Reads one event stream in a thread; ``next`` waits for the next event of given names."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.events: queue.Queue[Event | BaseException | None] = queue.Queue()
        self.status_code: int | None = None
        self.started = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self.started.wait(15):
            raise AssertionError(f"no response from {url}")

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=30) as response:
                self._response = response
                self.status_code = response.status_code
                self.started.set()
                block: list[str] = []
                for line in response.iter_lines():
                    if line:
                        block.append(line)
                        continue
                    event = _parse(block)
                    block = []
                    if event is not None:
                        self.events.put(event)
        except BaseException as exc:  # noqa: BLE001  # handed to the test thread
            self.events.put(exc)
        finally:
            self.started.set()
            self.events.put(None)

    def next(self, *names: str, timeout: float = 10.0) -> Event:
        """The next event with one of ``names`` (others are skipped); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {names} event within {timeout}s from {self.url}")
            try:
                item = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(f"the stream {self.url} ended before a {names} event")
            if isinstance(item, BaseException):
                raise AssertionError(f"the stream {self.url} failed: {item!r}")
            if not names or item.name in names:
                return item

    def close(self) -> None:
        """Hang up (the server notices the disconnect and ends the stream)."""
        if self._response is not None:
            # Closing the response from this thread would wait for the reader's blocked read; shutting
            # the socket down ends that read and sends the server a FIN at once.
            sock = self._response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def ended(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the stream."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _parse(lines: list[str]) -> Event | None:
    name, data, event_id = "message", [], None
    for line in lines:
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
        elif key == "id":
            event_id = value
    return Event(name, json.loads("\n".join(data)), event_id) if data else None


@dataclass
class Live:
    """A running server with keys for a customer, another customer, two operators and an admin."""

    base: str
    services: Services
    keys: dict[str, str]
    clock: MovableClock
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    readers: list[EventReader] = field(default_factory=list)

    def headers(self, who: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}

    def post(self, path: str, who: str, body: Any = None) -> httpx.Response:
        return self.client.post(f"{self.base}{path}", json=body or {}, headers=self.headers(who))

    def get(self, path: str, who: str) -> httpx.Response:
        return self.client.get(f"{self.base}{path}", headers=self.headers(who))

    def stream(self, path: str, who: str, **extra: str) -> EventReader:
        reader = EventReader(f"{self.base}{path}", self.headers(who, **extra))
        self.readers.append(reader)
        return reader

    def hang_up(self) -> None:
        """Close every open stream and the client (before the server stops: it waits for streams)."""
        for reader in self.readers:
            reader.close()
        self.client.close()


TUESDAY_NOON_TOKYO = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # inside business hours, as in seams
WHO = {"customer": "customer", "other": "customer", "ana": "operator", "ben": "operator", "admin": "admin"}


def issue_keys(database: Database) -> dict[str, str]:
    """One key for each of ``WHO``."""
    with database.session() as session:
        return {who: issue_key(session, role, who).secret for who, role in WHO.items()}  # type: ignore[arg-type]


@contextmanager
def serve_live(database_url: str, tmp_path: Path, responder: Any, **overrides: Any) -> Iterator[Live]:
    """The production app with ``responder`` on ``database_url`` under uvicorn on a free port."""
    settings = Settings(home=tmp_path, database_url=database_url, **overrides)
    database = Database.connect(database_url)
    keys = issue_keys(database)
    clock = MovableClock(TUESDAY_NOON_TOKYO)
    services = Services(
        settings=settings, database=database, responder=responder, clock=clock, index_chunks=9
    )
    try:
        with uvicorn_in_thread(create_app(settings, services), free_port()) as base:
            live = Live(base, services, keys, clock)
            try:
                yield live
            finally:
                live.hang_up()
    finally:
        database.dispose()

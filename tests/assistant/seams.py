"""Test seams for the API: the app harness, a clock to move, a failing responder, an SSE parser, and
uvicorn in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from assistant.api.app import create_app
from assistant.api.deps import Services
from assistant.db import Database, upgrade
from assistant.keys import issue_key
from assistant.settings import ROLES, ApiSettings, RateLimit, Settings


class MovableClock:
    """A clock the test moves forward by hand (the app reads it through ``Services.clock``)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def parse_events(text: str) -> list[tuple[str, Any]]:
    """``(event name, JSON data)`` for each server-sent event in a response body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


class ExplodingResponder:
    """Answers nothing: raises, after streaming ``deltas`` first. Injected through ``Services``."""

    def __init__(self, deltas: tuple[str, ...] = ()) -> None:
        self.deltas = deltas

    def respond(self, turn: Any) -> Any:
        raise RuntimeError("the responder exploded")

    def stream(self, turn: Any) -> Iterator[Any]:
        yield from self.deltas
        raise RuntimeError("the responder exploded")


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_in_thread(app: Any, port: int) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on ``127.0.0.1:port``; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class WitnessResponder:
    """Delegates to a real responder, noting first whether the message is already committed.

    It looks through its own database connection, so it sees only what other transactions committed.
    """

    def __init__(self, inner: Any, database_url: str) -> None:
        from assistant.db import Database

        self.inner = inner
        self.database = Database.connect(database_url)
        self.seen_committed: list[bool] = []

    def _witness(self, text: str) -> None:
        from sqlalchemy import select

        from assistant.models import Message

        with self.database.session() as session:
            found = session.scalar(select(Message.id).where(Message.text == text, Message.role == "customer"))
        self.seen_committed.append(found is not None)

    def respond(self, turn: Any) -> Any:
        self._witness(turn.message)
        return self.inner.respond(turn)

    def stream(self, turn: Any) -> Iterator[Any]:
        self._witness(turn.message)
        yield from self.inner.stream(turn)


@dataclass
class Api:
    """A running app with one key per role (and a second customer key) and a controllable clock."""

    client: TestClient
    services: Services
    keys: dict[str, str]
    clock: MovableClock

    def headers(self, who: str = "customer", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}", **extra}

    def open(self, who: str = "customer", **body: Any) -> str:
        response = self.client.post("/v1/conversations", json=body, headers=self.headers(who))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def say(self, cid: str, text: str, who: str = "customer", **headers: str) -> Any:
        return self.client.post(
            f"/v1/conversations/{cid}/messages", json={"text": text}, headers=self.headers(who, **headers)
        )

    def count(self, model: type, **where: Any) -> int:
        with self.services.database.session() as session:
            query = select(func.count()).select_from(model)
            for column, value in where.items():
                query = query.where(getattr(model, column) == value)
            return int(session.scalar(query) or 0)


@contextmanager
def start_api(database_url: str, tmp_path: Path, responder: Any, **overrides: Any) -> Iterator[Api]:
    """The production app on ``database_url`` with ``responder``, keys for every role, a movable clock."""
    settings = Settings(home=tmp_path, database_url=database_url, **overrides)
    database = Database.connect(database_url)
    keys: dict[str, str] = {}
    with database.session() as session:
        for who, role in [
            ("customer", "customer"),
            ("other", "customer"),
            ("operator", "operator"),
            ("admin", "admin"),
        ]:
            keys[who] = issue_key(session, role, who).secret  # type: ignore[arg-type]
        keys["widget"] = issue_key(session, "customer", "widget", publishable=True).secret
    clock = MovableClock(datetime(2026, 11, 24, 3, 0, tzinfo=UTC))  # a Tuesday, 12:00 in Tokyo
    services = Services(
        settings=settings, database=database, responder=responder, clock=clock, index_chunks=9
    )
    try:
        with TestClient(create_app(settings, services)) as client:
            yield Api(client, services, keys, clock)
    finally:
        database.dispose()


@contextmanager
def served_with_key(home: Path, responder: Any, role: str) -> Iterator[tuple[str, str]]:
    """The production app under uvicorn on a free port, on a SQLite file in ``home``, with rate limits
    no generated traffic reaches; yields its base URL and a key of ``role`` (for schemathesis)."""
    unlimited = RateLimit(per_minute=1_000_000, burst=1_000_000)
    app_settings = Settings(
        home=home, port=free_port(), api=ApiSettings(rate_limits=dict.fromkeys(ROLES, unlimited))
    )
    upgrade(app_settings)
    database = Database.connect(app_settings.database_url)
    with database.session() as session:
        key = issue_key(session, role, "fuzz").secret  # type: ignore[arg-type]
    app = create_app(app_settings, Services(settings=app_settings, database=database, responder=responder))
    try:
        with uvicorn_in_thread(app, app_settings.port) as base_url:
            yield base_url, key
    finally:
        database.dispose()

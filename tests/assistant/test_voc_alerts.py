"""Trend alerts end to end: stored customer messages -> scheduled checks -> stored alerts -> a real webhook.

The webhook is a real HTTP server on loopback in a thread; the database is each backend.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from assistant.cli import app as cli_app
from assistant.db import Database
from assistant.keys import issue_key
from assistant.models import Conversation, Message, TrendAlert
from assistant.settings import VocSettings
from assistant.voc.alerts import list_alerts, run_trend_check, sign
from assistant.voc.trends import TextEvent
from tests.assistant.seams import Api
from tests.assistant.test_voc_trends import START, calm_stream, spike

SECRET = "webhook-secret-for-tests"


class Webhook:
    """A loopback HTTP server that records POSTs and answers with ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((dict(self.headers), body))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/voc"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        thread.join(timeout=10)


def store_stream(database: Database, events: list[TextEvent]) -> None:
    """Customer messages at their own times, spread over conversations of one key."""
    events = sorted(events, key=lambda e: e.at)
    with database.session() as session:
        key = issue_key(session, "customer", "stream").info
        for start in range(0, len(events), 50):
            conversation = Conversation(id=uuid.uuid4(), api_key_id=key.id, status="closed", last_seq=0)
            session.add(conversation)
            part = events[start : start + 50]
            session.add_all(
                Message(conversation_id=conversation.id, seq=i + 1, role="customer", text=e.text,
                        created_at=e.at)
                for i, e in enumerate(part)
            )  # fmt: skip
            conversation.last_seq = len(part)


def settings(url: str | None) -> VocSettings:
    return VocSettings(trend_baseline_hours=48, webhook_url=url, webhook_secret=SECRET)


def test_an_outage_is_stored_once_and_posted_signed(database: Database, webhook: Webhook) -> None:
    outage_at = START + timedelta(hours=60, minutes=7)
    store_stream(database, calm_stream(64, 40, seed=1) + spike(outage_at, 90, per_hour=20, seed=2))
    raised = []
    for quarter in range(4 * 3):  # checks every 15 minutes from 59:00 to 61:45
        now = START + timedelta(hours=59, minutes=15 * quarter)
        raised.extend(run_trend_check(database, settings(webhook.url), now))
    assert len(raised) == 1
    alert = raised[0]
    assert alert.words[0] == "繋がる" and outage_at < alert.window_end <= outage_at + timedelta(hours=1)
    assert alert.delivered_at == alert.window_end and alert.delivery_error is None
    assert len(webhook.received) == 1
    headers, body = webhook.received[0]
    assert headers["X-Madoguchi-Signature"] == sign(body, SECRET)
    payload = json.loads(body)
    assert payload["type"] == "madoguchi.trend_alert" and payload["words"][0] == "繋がる"
    assert payload["count"] >= 5 and payload["examples"]
    with database.session() as session:
        assert [a.id for a in list_alerts(session, None, 10)] == [alert.id]


def test_a_failed_delivery_is_recorded_and_retried(database: Database, webhook: Webhook) -> None:
    outage_at = START + timedelta(hours=60)
    store_stream(database, calm_stream(62, 40, seed=3) + spike(outage_at, 60, per_hour=30, seed=4))
    webhook.status = 500
    now = outage_at + timedelta(minutes=45)
    [alert] = run_trend_check(database, settings(webhook.url), now)
    assert alert.delivered_at is None and alert.delivery_error == "HTTP 500: "
    webhook.status = 200
    later = now + timedelta(minutes=15)
    assert run_trend_check(database, settings(webhook.url), later) == []  # cooldown: nothing new
    with database.session() as session:
        row = session.get(TrendAlert, alert.id)
        assert row is not None and row.delivered_at == later and row.delivery_error is None
    assert len(webhook.received) == 2


def test_an_unreachable_webhook_never_breaks_the_check(database: Database, webhook: Webhook) -> None:
    store_stream(database, calm_stream(62, 40, seed=5) + spike(START + timedelta(hours=61), 60, 30, seed=6))
    dead = f"http://127.0.0.1:{webhook.server.server_address[1]}"
    webhook.server.shutdown()
    webhook.server.server_close()
    [alert] = run_trend_check(database, settings(dead), START + timedelta(hours=61, minutes=50))
    assert alert.delivered_at is None and alert.delivery_error and "Connect" in alert.delivery_error


def test_a_calm_day_raises_nothing(database: Database) -> None:
    store_stream(database, calm_stream(72, 40, seed=7))
    for hour in range(48, 72, 2):
        assert run_trend_check(database, settings(None), START + timedelta(hours=hour)) == []


def test_alerts_through_the_api_and_the_cli(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage_at = START + timedelta(hours=60)
    store_stream(api.services.database, calm_stream(61, 40, seed=8) + spike(outage_at, 60, 30, seed=9))
    api.clock.now = outage_at + timedelta(minutes=50)
    assert api.client.post("/v1/voc/alerts/check", headers=api.headers("operator")).status_code == 403
    checked = api.client.post("/v1/voc/alerts/check", headers=api.headers("admin"))
    assert checked.status_code == 200, checked.text
    [raised] = checked.json()
    assert raised["words"][0] == "繋がる" and raised["delivered_at"] is None
    listed = api.client.get("/v1/voc/alerts", headers=api.headers("operator"))
    assert [a["id"] for a in listed.json()] == [raised["id"]]
    assert api.client.get("/v1/voc/alerts", headers=api.headers("customer")).status_code == 403
    naive = api.client.get("/v1/voc/alerts?since=2026-11-22T00:00:00", headers=api.headers("admin"))
    assert naive.status_code == 422 and naive.json()["code"] == "naive_time"
    for bad in ("2026-13-01T00:00Z", "0.5", "1700000000"):
        refused = api.client.get(f"/v1/voc/alerts?since={bad}", headers=api.headers("admin"))
        assert refused.status_code == 422 and refused.json()["code"] == "validation_error", bad
    later = api.client.get("/v1/voc/alerts?since=2030-01-01T00:00:00Z", headers=api.headers("admin"))
    assert later.status_code == 200 and later.json() == []
    assert api.client.get("/v1/voc/alerts?limit=0", headers=api.headers("admin")).status_code == 422

    monkeypatch.setenv("MADOGUCHI_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli_app, ["voc", "trends", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert [a["id"] for a in json.loads(result.stdout)] == [raised["id"]]
    bad = CliRunner().invoke(cli_app, ["voc", "trends", "check", "--at", "yesterday"])
    assert bad.exit_code == 2 and "not an ISO date" in bad.output

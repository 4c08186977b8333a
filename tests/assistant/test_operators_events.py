"""Live events over a real server, on SQLite and PostgreSQL: the customer sees a person coming and the
operator's messages as they are stored; operators see the queue and their chats move; a missed
wake-up only delays an event; ``Last-Event-ID`` resumes where a stream left off."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from assistant.db import Database
from assistant.models import Conversation, Operator
from assistant.operators import add_operator_message
from assistant.settings import OperatorSettings
from assistant.transcripts import add_message
from tests.assistant.live import Live, serve_live

# No periodic re-check within a test: events must come from wake-ups (notifications).
ONLY_WAKEUPS = OperatorSettings(recheck_seconds=60, keepalive_seconds=60)


def _escalated(live: Live) -> str:
    assert live.post("/v1/operator/shift", "ana", {"on_shift": True}).status_code == 200
    cid = str(live.post("/v1/conversations", "customer", {"locale": "ja"}).json()["id"])
    turn = live.post(
        f"/v1/conversations/{cid}/messages", "customer", {"text": "オペレーターと話したい"}
    ).json()
    assert turn["status"] == "escalated"
    return cid


def _operator_says(live: Live, cid: str, text: str, who: str = "ana") -> None:
    """What a delivery does once the undo window ends: store the owner's message."""
    with live.services.database.session() as session:
        conversation = session.get_one(Conversation, uuid.UUID(cid))
        operator = session.query(Operator).filter_by(name=who).one()
        add_operator_message(session, conversation, operator, text)


def test_the_customer_sees_a_person_coming_and_their_messages_live(
    database_url: str, tmp_path: Path, responder: Any
) -> None:
    with serve_live(database_url, tmp_path, responder, operators=ONLY_WAKEUPS) as live:
        cid = _escalated(live)
        stream = live.stream(f"/v1/conversations/{cid}/events?seconds=30", "customer")
        assert stream.status_code == 200
        first, second = stream.next("message"), stream.next("message")
        assert (first.id, second.id) == ("1", "2") and second.data["role"] == "bot"
        assert second.data["confidence"] is None and second.data["reasons"] == []  # customer's view
        waiting = stream.next("status").data
        assert waiting["queue_position"] == 1 and waiting["with_person"] is False
        assert live.post(f"/v1/operator/conversations/{cid}/claim", "ana").status_code == 200
        assert stream.next("status", timeout=10).data["with_person"] is True
        started = time.monotonic()
        _operator_says(live, cid, "担当の佐藤です。ご用件を伺います。")
        said = stream.next("message", timeout=10)
        latency = time.monotonic() - started
        assert (said.id, said.data["role"], said.data["text"]) == (
            "3",
            "operator",
            "担当の佐藤です。ご用件を伺います。",
        )
        assert latency < 3.0, latency  # a wake-up, not the 60 s re-check
        assert live.post(f"/v1/conversations/{cid}/close", "customer").status_code == 200
        assert stream.next("status", timeout=10).data["status"] == "closed"
        assert stream.ended()
        # Resuming after seq 2 sends only what came later; a closed chat's stream then ends.
        resumed = live.stream(f"/v1/conversations/{cid}/events", "customer", **{"Last-Event-ID": "2"})
        assert resumed.next("message").id == "3"
        assert resumed.next("status").data["status"] == "closed" and resumed.ended()
        # An id that is not one of ours (another stream's) is ignored: the whole chat is sent again.
        foreign = live.stream(f"/v1/conversations/{cid}/events", "customer", **{"Last-Event-ID": "abc"})
        assert foreign.next("message").id == "1" and foreign.ended()
        other = live.stream(f"/v1/conversations/{cid}/events", "other")
        assert other.status_code == 404


def test_a_missed_wakeup_only_delays_the_event(database_url: str, tmp_path: Path, responder: Any) -> None:
    recheck = OperatorSettings(recheck_seconds=0.5, keepalive_seconds=60)
    with serve_live(database_url, tmp_path, responder, operators=recheck) as live:
        cid = _escalated(live)
        stream = live.stream(f"/v1/conversations/{cid}/events?after=2&seconds=20", "customer")
        assert stream.next("status").data["status"] == "escalated"
        # Written through another engine, outside the app's session hooks: nobody is woken.
        outsider = Database.connect(database_url)
        try:
            with outsider.session() as session:
                add_message(session, uuid.UUID(cid), "customer", "もしもし？")
        finally:
            outsider.dispose()
        late = stream.next("message", timeout=10)
        assert (late.id, late.data["text"]) == ("3", "もしもし？")


def test_operators_see_the_queue_and_their_chats_move(
    database_url: str, tmp_path: Path, responder: Any
) -> None:
    with serve_live(database_url, tmp_path, responder, operators=ONLY_WAKEUPS) as live:
        desk = live.stream("/v1/operator/events?seconds=30", "ben")
        assert desk.next("queue").data["items"] == [] and desk.next("mine").data["items"] == []
        cid = _escalated(live)
        queued = desk.next("queue", timeout=10).data["items"]
        assert [i["id"] for i in queued] == [cid] and queued[0]["position"] == 1
        assert live.post(f"/v1/operator/conversations/{cid}/claim", "ben").status_code == 200
        assert desk.next("queue", timeout=10).data["items"] == []
        assert [c["id"] for c in desk.next("mine", timeout=10).data["items"]] == [cid]
        chat = live.stream(f"/v1/operator/conversations/{cid}/events?seconds=30", "ben")
        assert [chat.next("message").id for _ in range(2)] == ["1", "2"]
        assert chat.next("state").data["assigned_operator_id"] is not None
        # While ben owns it the bot is silent, and ben's streams hear the customer at once.
        turn = live.post(f"/v1/conversations/{cid}/messages", "customer", {"text": "開通のやり方を教えて"})
        assert turn.json()["reply"] is None
        heard = chat.next("message", timeout=10)
        assert (heard.id, heard.data["role"], heard.data["text"]) == ("3", "customer", "開通のやり方を教えて")
        assert desk.next("mine", timeout=10).data["items"][0]["last_seq"] == 3
        live.post(f"/v1/operator/conversations/{cid}/notes", "ana", {"text": "前回も同じ質問"})
        assert chat.next("note", timeout=10).data["text"] == "前回も同じ質問"
        assert live.get(f"/v1/operator/conversations/{cid}/events", "customer").status_code == 403


def test_a_claim_or_release_moves_the_waiting_customers_place_at_once(
    database_url: str, tmp_path: Path, responder: Any
) -> None:
    with serve_live(database_url, tmp_path, responder, operators=ONLY_WAKEUPS) as live:
        first, second = _escalated(live), _escalated(live)
        waiting = live.stream(f"/v1/conversations/{second}/events?after=2&seconds=30", "customer")
        before = waiting.next("status").data
        assert (before["queue_position"], before["with_person"]) == (2, False)
        started = time.monotonic()
        assert live.post(f"/v1/operator/conversations/{first}/claim", "ana").status_code == 200
        moved_up = waiting.next("status", timeout=10).data
        assert (
            moved_up["queue_position"] == 1
            and moved_up["estimated_wait_seconds"] < before["estimated_wait_seconds"]
        )
        assert time.monotonic() - started < 3.0  # a wake-up, not the 60 s re-check
        assert live.post(f"/v1/operator/conversations/{first}/release", "ana").status_code == 200
        assert waiting.next("status", timeout=3).data["queue_position"] == 2  # back behind it
        # Another operator coming on shift shortens the estimate without anyone moving.
        assert live.post("/v1/operator/shift", "ben", {"on_shift": True}).status_code == 200
        shared = waiting.next("status", timeout=3).data
        assert shared["queue_position"] == 2 and shared["operators_on_shift"] == 2
        assert shared["estimated_wait_seconds"] < before["estimated_wait_seconds"]

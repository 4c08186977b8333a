"""Send with undo: pending rows, undo, delivery exactly once (restart, two workers), on both backends."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from assistant.db import Database
from assistant.delivery import (
    AlreadyDeliveredError,
    DeliveryNotFoundError,
    DeliveryWorker,
    UndoWindowClosedError,
    deliver_due,
    pending_of,
    schedule,
    undo,
)
from assistant.keys import issue_key
from assistant.models import Conversation, Message, Operator, OperatorDelivery, SuggestionSet
from assistant.transcripts import NewConversation, add_message, close_conversation, open_conversation
from tests.assistant.conftest import _empty_postgres
from tests.assistant.seams import Api, MovableClock, parse_events, start_api

T0 = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
UNDO = 5.0


def _operator(database: Database, name: str = "op") -> int:
    with database.session() as session:
        key = issue_key(session, "operator", name).info
        operator = Operator(api_key_id=key.id, name=name, on_shift=True, max_concurrent=5)
        session.add(operator)
        session.flush()
        return operator.id


def _conversations(database: Database, n: int) -> list[uuid.UUID]:
    with database.session() as session:
        key = issue_key(session, "customer", "c").info
        out = []
        for _ in range(n):
            conversation = open_conversation(session, key, NewConversation())
            add_message(session, conversation.id, "customer", "解約したい")
            out.append(conversation.id)
        return out


def _send(database: Database, cid: uuid.UUID, operator: int, text: str, at: datetime, **kw: object) -> int:
    with database.session() as session:
        row = schedule(
            session, conversation_id=cid, operator_id=operator, text=text, now=at, undo_seconds=UNDO, **kw
        )
        return row.id


def _operator_messages(database: Database, cid: uuid.UUID | None = None) -> list[tuple[str, int | None]]:
    with database.session() as session:
        query = select(Message.text, Message.operator_id).where(Message.role == "operator")
        if cid is not None:
            query = query.where(Message.conversation_id == cid)
        return [(r.text, r.operator_id) for r in session.execute(query.order_by(Message.seq))]


def test_a_message_waits_for_its_window_then_is_delivered_once(database: Database) -> None:
    operator, (cid,) = _operator(database), _conversations(database, 1)
    delivery_id = _send(database, cid, operator, "ご連絡ありがとうございます。", T0)
    assert deliver_due(database, T0 + timedelta(seconds=UNDO - 0.1)) == []
    with database.session() as session:
        assert [d.id for d in pending_of(session, cid, operator)] == [delivery_id]
    (delivered,) = deliver_due(database, T0 + timedelta(seconds=UNDO))
    assert (delivered.delivery_id, delivered.seq) == (delivery_id, 2)
    assert deliver_due(database, T0 + timedelta(seconds=60)) == []
    assert _operator_messages(database, cid) == [("ご連絡ありがとうございます。", operator)]
    with database.session() as session:
        row = session.get_one(OperatorDelivery, delivery_id)
        assert (row.status, row.message_id) == ("delivered", delivered.message_id)
        assert row.delivered_at == T0 + timedelta(seconds=UNDO)
        assert pending_of(session, cid, operator) == []


def test_undo_inside_the_window_cancels_and_afterwards_is_refused(database: Database) -> None:
    operator, other, (cid,) = _operator(database), _operator(database, "other"), _conversations(database, 1)
    undone = _send(database, cid, operator, "間違えました", T0)
    kept = _send(database, cid, operator, "正しい回答です", T0 + timedelta(seconds=1))
    with database.session() as session:
        with pytest.raises(DeliveryNotFoundError):  # not the author
            undo(session, conversation_id=cid, delivery_id=undone, operator_id=other, now=T0)
        with pytest.raises(DeliveryNotFoundError):  # not this conversation
            undo(session, conversation_id=uuid.uuid4(), delivery_id=undone, operator_id=operator, now=T0)
    for _ in range(2):  # undoing twice is harmless
        with database.session() as session:
            row = undo(session, conversation_id=cid, delivery_id=undone, operator_id=operator, now=T0)
            assert row.status == "cancelled"
    deliver_due(database, T0 + timedelta(seconds=30))
    assert _operator_messages(database, cid) == [("正しい回答です", operator)]
    with database.session() as session, pytest.raises(AlreadyDeliveredError, match=str(kept)):
        undo(session, conversation_id=cid, delivery_id=kept, operator_id=operator, now=T0)


def test_undo_after_the_window_is_refused_even_before_the_worker_ran(database: Database) -> None:
    operator, (cid,) = _operator(database), _conversations(database, 1)
    late = _send(database, cid, operator, "送信中", T0)
    with database.session() as session, pytest.raises(UndoWindowClosedError, match="closed"):
        end = T0 + timedelta(seconds=UNDO)
        undo(session, conversation_id=cid, delivery_id=late, operator_id=operator, now=end)
    assert len(deliver_due(database, T0 + timedelta(seconds=UNDO))) == 1


def test_messages_arrive_in_the_order_sent_and_a_closed_chat_gets_none(database: Database) -> None:
    operator, (cid, closed) = _operator(database), _conversations(database, 2)
    for i in range(5):
        _send(database, cid, operator, f"メッセージ{i}", T0 + timedelta(milliseconds=10 * i))
    dropped = _send(database, closed, operator, "届かない", T0)
    with database.session() as session:
        close_conversation(session, session.get_one(Conversation, closed))
    deliver_due(database, T0 + timedelta(seconds=UNDO + 1))
    assert [t for t, _ in _operator_messages(database, cid)] == [f"メッセージ{i}" for i in range(5)]
    assert _operator_messages(database, closed) == []
    with database.session() as session:
        assert session.get_one(OperatorDelivery, dropped).status == "cancelled"


def test_delivery_records_what_became_of_the_suggestions(database: Database) -> None:
    operator, (cid,) = _operator(database), _conversations(database, 1)
    with database.session() as session:
        message_id = session.scalars(select(Message.id).where(Message.conversation_id == cid)).one()
        drafts = [{"text": "解約は「契約内容」から手続きできます。", "citations": [], "source_id": "cancel"}]
        chosen = SuggestionSet(conversation_id=cid, for_message_id=message_id, drafts=drafts, created_at=T0)
        session.add(chosen)
        session.flush()
        set_id = chosen.id
    undone = _send(database, cid, operator, drafts[0]["text"], T0, suggestion_set_id=set_id, draft_index=0)
    with database.session() as session:
        undo(session, conversation_id=cid, delivery_id=undone, operator_id=operator, now=T0)
    at = T0 + timedelta(seconds=1)
    edited = "解約は「契約内容」からいつでも手続きできます。"
    _send(database, cid, operator, edited, at, suggestion_set_id=set_id, draft_index=0)
    with database.session() as session:
        row = session.get_one(SuggestionSet, set_id)
        assert row.outcome is None  # an undone message decides nothing
    deliver_due(database, at + timedelta(seconds=UNDO))
    with database.session() as session:
        row = session.get_one(SuggestionSet, set_id)
        assert (row.outcome, row.chosen_index) == ("edited", 0)
        assert 0.8 < (row.edit_similarity or 0) < 1.0


def test_a_worker_delivers_in_the_background_and_a_restart_loses_nothing(database: Database) -> None:
    operator, cids = _operator(database), _conversations(database, 3)
    clock = MovableClock(T0)
    ids = [_send(database, cid, operator, f"{n}", T0) for n, cid in enumerate(cids)]

    async def run_until(expected: int) -> int:
        """Run a fresh worker until it delivered ``expected`` messages, or for 3 rounds if 0."""
        worker = DeliveryWorker(database, clock, poll_seconds=0.05)
        worker.start()
        try:
            for _ in range(500):
                if worker.delivered >= expected if expected else worker.rounds >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            await worker.stop()
        return worker.delivered

    assert asyncio.run(run_until(0)) == 0  # the window is open: nothing goes out, the rows stay
    clock.now = T0 + timedelta(seconds=UNDO)
    assert asyncio.run(run_until(len(ids))) == len(ids)  # a new worker (a restart) delivers them
    assert asyncio.run(run_until(0)) == 0  # and a third delivers nothing twice
    assert sorted(t for t, _ in _operator_messages(database)) == ["0", "1", "2"]


@pytest.mark.postgres
def test_two_workers_on_one_postgres_deliver_each_message_once(postgres_server_url: str) -> None:
    _empty_postgres(postgres_server_url)
    setup = Database.connect(postgres_server_url)
    operator, cids = _operator(setup), _conversations(setup, 10)
    for i in range(60):
        _send(setup, cids[i % 10], operator, f"m{i:02d}", T0 + timedelta(milliseconds=i))
    replicas = [Database.connect(postgres_server_url) for _ in range(2)]
    delivered: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def work(n: int) -> None:
        start.wait()
        for _ in range(5):
            due = deliver_due(replicas[n], T0 + timedelta(seconds=UNDO + 1))
            delivered[n] += [d.delivery_id for d in due]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert sorted(delivered[0] + delivered[1]) == sorted(set(delivered[0] + delivered[1]))
        assert len(delivered[0]) + len(delivered[1]) == 60
        with setup.session() as session:
            query = select(func.count()).select_from(Message).where(Message.role == "operator")
            assert session.scalar(query) == 60
        for n, cid in enumerate(cids):  # each conversation's messages in the order sent
            assert [t for t, _ in _operator_messages(setup, cid)] == [f"m{i:02d}" for i in range(n, 60, 10)]
    finally:
        for db in (setup, *replicas):
            db.dispose()


# --- over HTTP, with the app's own worker -------------------------------------------------------------------


def _claimed(api: Api, who: str = "operator") -> str:
    """A conversation the customer handed to people and ``who`` claimed."""
    cid = api.open()
    assert api.say(cid, "担当者と話したい").json()["status"] == "escalated"
    claimed = api.client.post(f"/v1/operator/conversations/{cid}/claim", headers=api.headers(who))
    assert claimed.status_code == 200, claimed.text
    return cid


def _post(api: Api, cid: str, who: str = "operator", **body: object) -> Any:
    return api.client.post(f"/v1/operator/conversations/{cid}/messages", json=body, headers=api.headers(who))


def _undo(api: Api, cid: str, delivery_id: int, who: str = "operator") -> Any:
    url = f"/v1/operator/conversations/{cid}/messages/{delivery_id}/undo"
    return api.client.post(url, headers=api.headers(who))


def _wait_for_operator_messages(api: Api, expected: int) -> None:
    """Wake the app's worker (the clock moved) until ``expected`` operator messages exist, and 3 rounds on."""
    worker = api.client.app.state.delivery_worker  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while api.count(Message, role="operator") < expected and time.monotonic() < deadline:
        worker.wake()
        time.sleep(0.02)
    rounds = worker.rounds
    while worker.rounds < rounds + 3 and time.monotonic() < deadline:
        worker.wake()
        time.sleep(0.02)
    assert api.count(Message, role="operator") == expected


def test_send_undo_and_delivery_over_http(api: Api) -> None:
    cid = _claimed(api)
    first = _post(api, cid, text="少々お待ちください。")
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "pending" and body["message_id"] is None
    assert datetime.fromisoformat(body["deliver_at"]) == api.clock.now + timedelta(seconds=UNDO)
    second = _post(api, cid, text="解約金は0円です。").json()
    pending = api.client.get(f"/v1/operator/conversations/{cid}/pending", headers=api.headers("operator"))
    assert [d["id"] for d in pending.json()] == [body["id"], second["id"]]

    undone = _undo(api, cid, body["id"])
    assert undone.status_code == 200 and undone.json()["status"] == "cancelled"
    api.clock.advance(timedelta(seconds=UNDO))
    _wait_for_operator_messages(api, 1)

    late = _undo(api, cid, second["id"])
    assert (late.status_code, late.json()["code"]) == (409, "already_delivered")
    transcript = api.client.get(f"/v1/conversations/{cid}", headers=api.headers("customer")).json()
    operator_messages = [m for m in transcript["messages"] if m["role"] == "operator"]
    assert [m["text"] for m in operator_messages] == ["解約金は0円です。"]
    events = api.client.get(f"/v1/conversations/{cid}/events?seconds=0.5", headers=api.headers("customer"))
    received = [data for name, data in parse_events(events.text) if name == "message"]
    assert [m["text"] for m in received if m["role"] == "operator"] == ["解約金は0円です。"]


def test_bad_sends_and_undos_get_precise_errors(api: Api) -> None:
    cid = _claimed(api)
    with api.services.database.session() as session:
        api.keys["operator2"] = issue_key(session, "operator", "operator2").secret
    url = f"/v1/operator/conversations/{cid}"
    cases = [
        (_post(api, cid, text="   "), 422, "validation_error"),
        (_post(api, cid, text="あ" * 4001), 422, "message_too_long"),
        (_post(api, cid, text="hi", extra=1), 422, "validation_error"),
        (_post(api, cid, text="hi", draft_index=0), 422, "no_such_draft"),
        (_post(api, cid, text="hi", suggestion_set_id=99), 404, "suggestion_set_not_found"),
        (_post(api, str(uuid.uuid4()), text="hi"), 404, "conversation_not_found"),
        (_post(api, cid, who="operator2", text="hi"), 409, "not_assigned_to_you"),
        (_post(api, cid, who="customer", text="hi"), 403, "forbidden"),
        (_undo(api, cid, 12345), 404, "delivery_not_found"),
        (_undo(api, cid, 0), 422, "validation_error"),
        (api.client.get(f"{url}-0/pending", headers=api.headers("operator")), 422, "validation_error"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    sent = _post(api, cid, text="送ります").json()
    theirs = _undo(api, cid, sent["id"], "operator2")
    assert (theirs.status_code, theirs.json()["code"]) == (404, "delivery_not_found")
    api.clock.advance(timedelta(seconds=UNDO))  # the window is over; the worker has not run for it yet
    closed = _undo(api, cid, sent["id"])
    assert closed.status_code == 409 and closed.json()["code"] in ("undo_window_closed", "already_delivered")
    _wait_for_operator_messages(api, 1)
    operator = api.headers("operator")
    resolved = api.client.post(f"{url}/resolve", json={"outcome": "resolved"}, headers=operator)
    assert resolved.status_code == 200, resolved.text
    after = _post(api, cid, text="まだありますか")
    assert (after.status_code, after.json()["code"]) == (409, "conversation_closed")


def test_a_restart_delivers_every_pending_message_exactly_once(
    database_url: str, tmp_path: Path, responder: Any
) -> None:
    with start_api(database_url, tmp_path, responder) as first:
        cids = [_claimed(first) for _ in range(2)]
        ids = [_post(first, cid, text=f"{cid}:{n}").json()["id"] for cid in cids for n in range(2)]
        deliver_at = first.clock.now + timedelta(seconds=UNDO)
    # The first app is gone with its messages still pending; a new one (new worker) takes them over.
    with start_api(database_url, tmp_path, responder) as second:
        assert second.count(OperatorDelivery, status="pending") == len(ids)
        second.clock.now = deliver_at
        _wait_for_operator_messages(second, len(ids))
        assert second.count(OperatorDelivery, status="delivered") == len(ids)
        with second.services.database.session() as session:
            for cid in cids:
                mine = (Message.conversation_id == uuid.UUID(cid), Message.role == "operator")
                texts = session.scalars(select(Message.text).where(*mine).order_by(Message.seq)).all()
                assert texts == [f"{cid}:0", f"{cid}:1"]


def test_a_retried_send_with_the_same_idempotency_key_is_scheduled_once(api: Api) -> None:
    cid = _claimed(api)
    with api.services.database.session() as session:
        api.keys["operator2"] = issue_key(session, "operator", "operator2").secret
    url = f"/v1/operator/conversations/{cid}/messages"

    def send(text: str, key: str, who: str = "operator") -> Any:
        headers = api.headers(who, **{"Idempotency-Key": key})
        return api.client.post(url, json={"text": text}, headers=headers)

    first = send("確認いたします。", "send-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    retried = send("確認いたします。", "send-1")
    assert (retried.status_code, retried.json()) == (202, first.json())
    assert retried.headers["Idempotent-Replayed"] == "true"
    reused = send("別の文面です。", "send-1")
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    # Keys belong to the API key that used them: another operator's "send-1" is a request of its own.
    theirs = send("確認いたします。", "send-1", who="operator2")
    assert (theirs.status_code, theirs.json()["code"]) == (409, "not_assigned_to_you")
    malformed = send("確認いたします。", "has space")
    assert (malformed.status_code, malformed.json()["code"]) == (422, "validation_error")
    with api.services.database.session() as session:
        query = select(OperatorDelivery.text).where(OperatorDelivery.conversation_id == uuid.UUID(cid))
        assert session.scalars(query).all() == ["確認いたします。"]

    api.clock.advance(timedelta(seconds=UNDO))
    _wait_for_operator_messages(api, 1)
    late = send("確認いたします。", "send-1")  # a retry after delivery still replays the first answer
    assert (late.status_code, late.json()["id"]) == (202, first.json()["id"])
    _wait_for_operator_messages(api, 1)

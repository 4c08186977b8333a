"""Idempotency-Key over HTTP on SQLite and PostgreSQL: retries replay, never duplicate, and take over."""

from __future__ import annotations

import uuid
from datetime import timedelta

from assistant.api import turns
from assistant.keys import KeyInfo, find_key
from assistant.models import Message
from tests.assistant.seams import Api, parse_events


def test_a_retried_message_is_stored_once(api: Api) -> None:
    cid = api.open()
    first = api.say(cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-1"})
    retry = api.say(cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-1"})
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json() and retry.headers["idempotent-replayed"] == "true"
    streamed = api.say(
        cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-1", "Accept": "text/event-stream"}
    )
    assert parse_events(streamed.text) == [("reply", first.json())]
    api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers())
    late = api.say(cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-1"})  # closed since: still replayed
    assert late.status_code == 200 and late.json() == first.json()
    assert api.count(Message, conversation_id=uuid.UUID(cid)) == 2


def test_an_idempotency_key_reused_for_another_request_is_refused(api: Api) -> None:
    cid, other = api.open(), api.open()
    api.say(cid, "hello", **{"Idempotency-Key": "k-2"})
    different = api.say(cid, "something else", **{"Idempotency-Key": "k-2"})
    assert different.status_code == 422 and different.json()["code"] == "idempotency_key_reused"
    elsewhere = api.say(other, "hello", **{"Idempotency-Key": "k-2"})
    assert elsewhere.status_code == 422
    assert api.say(cid, "hello", **{"Idempotency-Key": "bad key with spaces"}).status_code == 422
    assert api.count(Message, role="customer") == 1


def test_a_retried_conversation_is_created_once(api: Api) -> None:
    body = {"visitor_id": "v-1", "locale": "ja"}
    first = api.client.post("/v1/conversations", json=body, headers=api.headers(**{"Idempotency-Key": "c-1"}))
    again = api.client.post("/v1/conversations", json=body, headers=api.headers(**{"Idempotency-Key": "c-1"}))
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    changed = api.client.post(
        "/v1/conversations", json=body | {"locale": "en"}, headers=api.headers(**{"Idempotency-Key": "c-1"})
    )
    assert changed.status_code == 422


def test_a_retry_while_answering_waits_and_after_a_crash_takes_over(api: Api) -> None:
    cid = api.open()
    # A first attempt stores the message and then dies before answering: run only its first half.
    prepared = turns.receive_message(
        api.services, _customer_key(api), uuid.UUID(cid), "開通のやり方を教えて", "k-3"
    )
    assert isinstance(prepared, turns.PreparedTurn)
    stored = prepared.stored
    busy = api.say(cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-3"})
    assert busy.status_code == 409 and busy.json()["code"] == "idempotency_in_progress"
    assert int(busy.headers["retry-after"]) >= 1
    api.clock.advance(timedelta(seconds=api.services.settings.api.idempotency_lease_seconds + 1))
    taken = api.say(cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-3"})
    assert taken.status_code == 200, taken.text
    assert (
        taken.json()["message"]["id"] == stored.message_id and taken.json()["reply"]["decision"] == "answer"
    )
    assert api.count(Message, conversation_id=uuid.UUID(cid), role="customer") == 1
    replay = api.say(cid, "開通のやり方を教えて", **{"Idempotency-Key": "k-3"})
    assert replay.json() == taken.json()


def _customer_key(api: Api) -> KeyInfo:
    with api.services.database.session() as session:
        key = find_key(session, api.keys["customer"])
    assert key is not None
    return key

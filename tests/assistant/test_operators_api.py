"""The operator endpoints over HTTP, on SQLite and PostgreSQL, with the real responder: roles, the
queue, claims, bot silence while a person owns a chat, the packet, notes, resolve, and every refusal."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import select

from assistant.keys import issue_key
from assistant.models import Conversation, Operator, Resolution
from tests.assistant.seams import Api

QUEUE = "/v1/operator/queue"


def _conv(cid: str, action: str = "") -> str:
    return f"/v1/operator/conversations/{cid}{'/' + action if action else ''}"


def _second_operator(api: Api) -> dict[str, str]:
    with api.services.database.session() as session:
        secret = issue_key(session, "operator", "ben").secret
    return {"Authorization": f"Bearer {secret}"}


def _on_shift(api: Api, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = api.client.post(
        "/v1/operator/shift", json={"on_shift": True}, headers=headers or api.headers("operator")
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _escalated(api: Api, **body: Any) -> str:
    cid = api.open(**body)
    turn = api.say(cid, "オペレーターと話したい").json()
    assert turn["status"] == "escalated", turn
    return cid


def test_operator_endpoints_take_operator_keys_only(api: Api) -> None:
    cid = api.open()
    for who in ("customer", "admin", "widget"):
        for path in (QUEUE, _conv(cid), "/v1/operator/me"):
            response = api.client.get(path, headers=api.headers(who))
            assert response.status_code == 403 and response.json()["code"] == "forbidden", (who, path)
        posted = api.client.post(_conv(cid, "claim"), headers=api.headers(who))
        assert posted.status_code == 403
    assert api.client.get(QUEUE).status_code == 401
    assert api.client.get("/v1/admin/api-keys", headers=api.headers("operator")).status_code == 403
    # A customer's stream is the customer's own: an operator key cannot open it.
    assert (
        api.client.get(f"/v1/conversations/{cid}/events", headers=api.headers("operator")).status_code == 403
    )
    me = api.client.get("/v1/operator/me", headers=api.headers("operator")).json()
    assert me["name"] == "operator" and me["on_shift"] is False
    assert api.count(Operator) == 1  # created on first use, once


def test_shift_counts_people_for_the_escalation_policy(api: Api) -> None:
    left_message = api.say(api.open(locale="en"), "I want to talk to a person").json()["reply"]
    assert left_message["decision"] == "take_message"  # nobody on shift
    assert _on_shift(api)["on_shift"] is True
    live = api.say(api.open(locale="en"), "I want to talk to a person").json()["reply"]
    assert live["decision"] == "escalate"  # the operator on shift in the database counts
    queue = api.client.get(QUEUE, headers=api.headers("operator")).json()
    assert [item["position"] for item in queue] == [1, 2]  # the message left earlier waits in the same queue
    off = api.client.post("/v1/operator/shift", json={"on_shift": False}, headers=api.headers("operator"))
    assert off.json()["on_shift"] is False
    bad = api.client.post("/v1/operator/shift", json={"on_shift": "yes"}, headers=api.headers("operator"))
    assert bad.status_code == 422


def test_a_person_takes_over_and_the_bot_stays_silent(api: Api) -> None:
    _on_shift(api)
    cid = _escalated(api, member_id="M-9")
    waiting = api.client.get(f"/v1/conversations/{cid}", headers=api.headers()).json()["handoff"]
    assert waiting == {
        "status": "escalated",
        "with_person": False,
        "queue_position": 1,
        "estimated_wait_seconds": 300.0,
        "operators_on_shift": 1,
    }
    queue = api.client.get(QUEUE, headers=api.headers("operator")).json()
    assert queue[0]["id"] == cid and queue[0]["member_id"] == "M-9"
    claimed = api.client.post(_conv(cid, "claim"), headers=api.headers("operator"))
    assert claimed.status_code == 200 and claimed.json()["assigned_operator_id"] is not None
    again = api.client.post(_conv(cid, "claim"), headers=_second_operator(api))
    assert again.status_code == 409 and again.json()["code"] == "already_claimed"
    # The customer writes: stored, no bot reply, even for a question the bot could answer.
    turn = api.say(cid, "開通のやり方を教えて").json()
    assert turn["reply"] is None and turn["status"] == "escalated"
    status = api.client.get(f"/v1/conversations/{cid}/status", headers=api.headers()).json()
    assert status["with_person"] is True and status["queue_position"] is None
    packet = api.client.get(_conv(cid), headers=api.headers("operator")).json()
    assert packet["transcript"][-1]["text"] == "開通のやり方を教えて"
    assert [m["role"] for m in packet["transcript"]] == ["customer", "bot", "customer"]
    assert packet["customer"]["member_id"] == "M-9" and packet["decision"] == "escalate"
    assert "human_requested" in packet["reasons"] and packet["summary"]["method"] == "extractive"
    assert packet["attempts"][0]["confidence"] is not None


def test_notes_and_confidence_stay_with_operators(api: Api) -> None:
    _on_shift(api)
    cid = _escalated(api)
    note = api.client.post(
        _conv(cid, "notes"), json={"text": "要注意: 二度目の問い合わせ"}, headers=api.headers("operator")
    )
    assert note.status_code == 201
    for blank in ("", "   ", "\x00"):
        bad = api.client.post(_conv(cid, "notes"), json={"text": blank}, headers=api.headers("operator"))
        assert bad.status_code == 422
    seen_by_customer = api.client.get(f"/v1/conversations/{cid}", headers=api.headers()).text
    assert "要注意" not in seen_by_customer and "human_requested" not in seen_by_customer
    transcript = api.client.get(f"/v1/conversations/{cid}", headers=api.headers()).json()
    assert all(m["confidence"] is None and m["reasons"] == [] for m in transcript["messages"])
    as_operator = api.client.get(f"/v1/conversations/{cid}", headers=api.headers("operator")).json()
    assert as_operator["messages"][1]["reasons"]  # operators see why
    packet = api.client.get(_conv(cid), headers=api.headers("operator")).json()
    assert [n["text"] for n in packet["notes"]] == ["要注意: 二度目の問い合わせ"]
    other = api.client.get(f"/v1/conversations/{cid}/status", headers=api.headers("other"))
    assert other.status_code == 404  # another customer's conversation does not exist for them


def test_resolve_closes_the_chat_with_its_record(api: Api) -> None:
    _on_shift(api)
    cid = _escalated(api)
    api.client.post(_conv(cid, "claim"), headers=api.headers("operator"))
    for bad in (
        {"outcome": "fixed"},
        {},
        {"outcome": "resolved", "tags": ["ok", ""]},
        {"outcome": "resolved", "tags": ["x"] * 21},
        {"outcome": "resolved", "extra": 1},
    ):
        response = api.client.post(_conv(cid, "resolve"), json=bad, headers=api.headers("operator"))
        assert response.status_code == 422, bad
    body = {
        "outcome": "resolved",
        "tags": ["activation", "activation"],
        "answer_text": " 再起動で解決 ",
        "answer_source_ids": ["sim-activation"],
    }
    done = api.client.post(_conv(cid, "resolve"), json=body, headers=api.headers("operator"))
    assert done.status_code == 200, done.text
    record = done.json()
    assert (record["path"], record["outcome"], record["tags"]) == ("operator", "resolved", ["activation"])
    assert record["answer_text"] == "再起動で解決" and record["answer_source_ids"] == ["sim-activation"]
    assert api.client.get(f"/v1/conversations/{cid}", headers=api.headers()).json()["status"] == "closed"
    twice = api.client.post(_conv(cid, "resolve"), json=body, headers=api.headers("operator"))
    assert twice.status_code == 409 and twice.json()["code"] == "already_resolved"
    assert api.say(cid, "ありがとう").status_code == 409  # closed: no more messages


def test_transfer_release_and_hand_back_over_http(api: Api) -> None:
    _on_shift(api)
    ben = _second_operator(api)
    ben_id = _on_shift(api, ben)["id"]
    cid = _escalated(api)
    assert (
        api.client.post(_conv(cid, "release"), headers=api.headers("operator")).json()["code"]
        == "not_assigned_to_you"
    )
    api.client.post(_conv(cid, "claim"), headers=api.headers("operator"))
    unknown = api.client.post(
        _conv(cid, "transfer"), json={"operator_id": 999999}, headers=api.headers("operator")
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "operator_not_found"
    for bad in ({"operator_id": 0}, {"operator_id": "x"}, {}):
        assert (
            api.client.post(_conv(cid, "transfer"), json=bad, headers=api.headers("operator")).status_code
            == 422
        )
    moved = api.client.post(
        _conv(cid, "transfer"), json={"operator_id": ben_id}, headers=api.headers("operator")
    )
    assert moved.status_code == 200 and moved.json()["assigned_operator_id"] == ben_id
    mine = api.client.get("/v1/operator/conversations", headers=ben).json()
    assert [c["id"] for c in mine] == [cid]
    assert api.client.post(_conv(cid, "release"), headers=ben).json()["assigned_operator_id"] is None
    assert api.client.get(QUEUE, headers=ben).json()[0]["id"] == cid
    api.client.post(_conv(cid, "claim"), headers=ben)
    back = api.client.post(_conv(cid, "handback"), headers=ben)
    assert back.status_code == 200 and back.json()["status"] == "open"
    reply = api.say(cid, "開通のやり方を教えて").json()["reply"]
    assert reply is not None and reply["decision"] == "answer"  # the bot answers again
    assert api.client.post(_conv(cid, "claim"), headers=ben).json()["code"] == "not_waiting"


def test_unknown_conversations_and_bad_ids(api: Api) -> None:
    missing = str(uuid.uuid4())
    operator = api.headers("operator")
    for method, action in (("post", "claim"), ("post", "release"), ("post", "handback"), ("get", "")):
        response = getattr(api.client, method)(_conv(missing, action), headers=operator)
        assert response.status_code == 404 and response.json()["code"] == "conversation_not_found", action
    note = api.client.post(_conv(missing, "notes"), json={"text": "x"}, headers=operator)
    assert note.status_code == 404
    resolve = api.client.post(_conv(missing, "resolve"), json={"outcome": "resolved"}, headers=operator)
    assert resolve.status_code == 404
    assert api.client.get(_conv(missing, "events"), headers=operator).status_code == 404
    assert api.client.get(f"/v1/conversations/{missing}/events", headers=api.headers()).status_code == 404
    assert api.client.post(_conv("not-a-uuid", "claim"), headers=operator).status_code == 422


def test_a_customer_closing_the_chat_leaves_a_bot_resolution(api: Api) -> None:
    cid = api.open()
    reply = api.say(cid, "開通のやり方を教えて").json()["reply"]
    api.client.post(
        f"/v1/conversations/{cid}/feedback",
        json={"message_id": reply["id"], "rating": "up"},
        headers=api.headers(),
    )
    assert api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers()).status_code == 200
    assert api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers()).status_code == 200
    with api.services.database.session() as session:
        record = session.scalars(select(Resolution)).one()
    assert (record.path, record.outcome, record.operator_id) == ("bot", "resolved", None)
    assert record.answer_source_ids == ["sim-activation"]


def test_two_operators_claiming_at_once_over_http(api: Api) -> None:
    _on_shift(api)
    cid = _escalated(api)
    ben = _second_operator(api)
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def attempt(headers: dict[str, str]) -> None:
        barrier.wait()
        codes.append(api.client.post(_conv(cid, "claim"), headers=headers).status_code)

    threads = [threading.Thread(target=attempt, args=(h,)) for h in (api.headers("operator"), ben)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]
    with api.services.database.session() as session:
        assert session.get_one(Conversation, uuid.UUID(cid)).assigned_operator_id is not None


def test_the_operator_list_and_my_conversations(api: Api) -> None:
    me = _on_shift(api)
    listed = api.client.get("/v1/operator/operators", headers=api.headers("operator")).json()
    assert listed == [me]
    assert api.client.get("/v1/operator/conversations", headers=api.headers("operator")).json() == []

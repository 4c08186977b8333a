"""The customer lookup hook against a real HTTP server on the loopback interface: its answer wins and
is written back; a slow, failing or nonsensical server falls back to the customers table."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from assistant.customers import CustomerLookup, identify
from assistant.db import Database
from assistant.handoff import Summarizer, build_packet
from assistant.keys import issue_key
from assistant.models import Conversation, Customer
from assistant.settings import OperatorSettings
from assistant.transcripts import (
    BotReply,
    NewConversation,
    add_bot_reply,
    add_message,
    open_conversation,
    upsert_customer,
)

CRM = {
    "M-1": (200, json.dumps({"name": "鈴木 一郎", "plan": "premium", "vip": True, "since": "2019"})),
    "M-bad-json": (200, "{not json"),
    "M-bad-type": (200, json.dumps({"vip": "perhaps"})),
    "M-500": (500, "oops"),
    "M-slow": (200, json.dumps({"name": "late", "vip": True})),
}


class _CRM(BaseHTTPRequestHandler):
    """A tiny CRM: GET /members/<id>, answers from ``CRM``; ``M-slow`` answers after 2 s."""

    seen_auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802  # the stdlib's handler naming
        member = self.path.rsplit("/", 1)[-1]
        _CRM.seen_auth.append(self.headers.get("Authorization"))
        if member == "M-slow":
            time.sleep(2)
        status, body = CRM.get(member, (404, "{}"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # keep test output clean
        return


@pytest.fixture(scope="module")
def crm_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CRM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/members/{{member_id}}"
    finally:
        server.shutdown()
        server.server_close()


def _lookup(url: str) -> CustomerLookup:
    return CustomerLookup(
        OperatorSettings(
            customer_lookup_url=url, customer_lookup_timeout=0.5, customer_lookup_token=SecretStr("t0k")
        )
    )


def test_the_hook_answers_and_its_answer_is_kept(database: Database, crm_url: str) -> None:
    lookup = _lookup(crm_url)
    try:
        with database.session() as session:
            upsert_customer(session, "M-1", name="旧姓", plan="basic", vip=False)
            found = identify(session, "M-1", lookup)
        with database.session() as session:
            stored = session.query(Customer).filter_by(member_id="M-1").one()
    finally:
        lookup.close()
    assert found is not None
    assert (found.name, found.plan, found.vip, found.source) == ("鈴木 一郎", "premium", True, "lookup")
    assert (stored.name, stored.plan, stored.vip) == ("鈴木 一郎", "premium", True)
    assert "Bearer t0k" in _CRM.seen_auth


@pytest.mark.parametrize("member", ["M-bad-json", "M-bad-type", "M-500", "M-slow", "M-unknown"])
def test_any_failure_falls_back_to_the_table(database: Database, crm_url: str, member: str) -> None:
    lookup = _lookup(crm_url)
    try:
        with database.session() as session:
            upsert_customer(session, member, name="テーブル 太郎", plan="family", vip=False)
            started = time.monotonic()
            found = identify(session, member, lookup)
            elapsed = time.monotonic() - started
    finally:
        lookup.close()
    assert found is not None and (found.name, found.plan, found.source) == (
        "テーブル 太郎",
        "family",
        "table",
    )
    assert elapsed < 1.5  # the 0.5 s timeout, not the server's 2 s


def test_unreachable_hook_and_no_hook(database: Database) -> None:
    with database.session() as session:
        upsert_customer(session, "M-7", name="佐々木", plan=None, vip=True)
        refused = _lookup("http://127.0.0.1:9/members/{member_id}")  # nothing listens on the discard port
        try:
            assert identify(session, "M-7", refused).source == "table"  # type: ignore[union-attr]
        finally:
            refused.close()
        assert identify(session, "M-7", None).vip is True  # type: ignore[union-attr]
        assert identify(session, None, None) is None  # an anonymous visitor
        unknown = identify(session, "M-new", None)
    assert unknown is not None and (unknown.name, unknown.vip) == (None, False)


def test_a_vip_found_by_the_hook_moves_up_the_queue(database: Database, crm_url: str) -> None:
    now = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    with database.session() as session:
        key = issue_key(session, "customer", "c").info
        conversation = open_conversation(session, key, NewConversation(member_id="M-1"))
        question = add_message(session, conversation.id, "customer", "担当者と話したい")
        add_bot_reply(
            session,
            conversation,
            question,
            BotReply("おつなぎします。", "escalate", 0.2, ("human_requested",)),
        )
        conversation.queued_at = now
        cid = conversation.id
    lookup = _lookup(crm_url)
    try:
        with database.session() as session:
            before = session.get_one(Conversation, cid).priority
            packet = build_packet(session, session.get_one(Conversation, cid), Summarizer(None), lookup)
    finally:
        lookup.close()
    with database.session() as session:
        after = session.get_one(Conversation, cid).priority
    assert packet.customer is not None and packet.customer.vip and packet.customer.source == "lookup"
    assert before == 0 and after > 0

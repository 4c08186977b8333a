"""The operator workspace in the database, on SQLite and PostgreSQL: the queue, atomic claims,
ownership changes, resolutions, the hand-off packet and the migration that adds it all."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alembic import command
from pydantic import SecretStr
from sqlalchemy import func, select, text

from assistant.answer import Citation
from assistant.db import Database, alembic_config, upgrade
from assistant.handoff import Summarizer, build_packet
from assistant.keys import issue_key
from assistant.llm import LiteLLMChat
from assistant.models import Conversation, Message, Operator, Resolution
from assistant.operators import (
    AlreadyClaimedError,
    AlreadyResolvedError,
    AtCapacityError,
    NotAssignedError,
    NotWaitingError,
    OperatorNotFoundError,
    OperatorUnavailableError,
    ResolutionInput,
    add_note,
    add_operator_message,
    claim,
    desk_state,
    ensure_operator,
    hand_back,
    queue,
    queue_position,
    record_customer_close,
    release,
    resolve,
    set_shift,
    transfer,
)
from assistant.transcripts import (
    BotReply,
    ConversationNotFoundError,
    NewConversation,
    add_bot_reply,
    add_message,
    close_conversation,
    open_conversation,
    rate_message,
    upsert_customer,
)
from tests.assistant.conftest import PG_ADMIN_URL

T0 = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
CITATION = Citation(number=1, title="解約の手続き", url=None, chunk_id="faq-cancel#0", source_id="faq-cancel")


def _operator(database: Database, name: str, on_shift: bool = True, max_concurrent: int = 5) -> Operator:
    with database.session() as session:
        key = issue_key(session, "operator", name).info
        operator = ensure_operator(session, key, T0, max_concurrent)
        return set_shift(session, operator, on_shift, T0)


def _handed_over(
    database: Database, member: str | None = None, decision: str = "escalate", at: datetime = T0
) -> uuid.UUID:
    """A conversation the bot handed to people: a question, an attempted answer, then the hand-off."""
    with database.session() as session:
        key = issue_key(session, "customer", "c").info
        conversation = open_conversation(session, key, NewConversation(member_id=member))
        question = add_message(
            session, conversation.id, "customer", "解約したいのですが、違約金はかかりますか？"
        )
        answer = BotReply("解約はマイページから手続きできます。[1]", "answer", 0.71, (), (CITATION,), "解約")
        add_bot_reply(session, conversation, question, answer)
        again = add_message(session, conversation.id, "customer", "違約金の金額を教えてください")
        handoff = BotReply(
            "担当者におつなぎします。", decision, 0.31, ("low_confidence", "sensitive_topic:cancellation")
        )
        add_bot_reply(session, conversation, again, handoff)
        conversation.queued_at = at  # as if it had been handed over at ``at``
        return conversation.id


def test_the_queue_takes_vips_first_then_the_longest_waiting(database: Database) -> None:
    with database.session() as session:
        upsert_customer(session, "VIP-1", name="大口 様", plan="business", vip=True)
    older = _handed_over(database, at=T0 - timedelta(minutes=10))
    newer = _handed_over(database, at=T0 - timedelta(minutes=1))
    vip = _handed_over(database, member="VIP-1", decision="take_message", at=T0)
    operator = _operator(database, "佐藤")
    with database.session() as session:
        assert [c.id for c in queue(session)] == [vip, older, newer]
        assert [queue_position(session, session.get_one(Conversation, c)) for c in (vip, older, newer)] == [
            1,
            2,
            3,
        ]
        assert desk_state(session, T0, timedelta(minutes=15)).waiting == 3
        assert desk_state(session, T0 + timedelta(hours=1), timedelta(minutes=15)).on_shift == 0  # not seen
        claim(session, vip, operator, T0)
    with database.session() as session:
        assert [c.id for c in queue(session)] == [older, newer]
        assert queue_position(session, session.get_one(Conversation, vip)) is None
        state = desk_state(session, T0, timedelta(minutes=15))
    assert (state.on_shift, state.waiting) == (1, 2)


@pytest.mark.parametrize("claimers", [8])
def test_exactly_one_of_concurrent_claimers_wins(database: Database, claimers: int) -> None:
    cid = _handed_over(database)
    operators = [_operator(database, f"op{i}") for i in range(claimers)]
    barrier = threading.Barrier(claimers)
    won: list[int] = []
    lost: list[BaseException] = []

    def attempt(operator: Operator) -> None:
        barrier.wait()
        try:
            with database.session() as session:
                claim(session, cid, operator, T0)
            won.append(operator.id)
        except AlreadyClaimedError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=attempt, args=(o,)) for o in operators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == claimers - 1
    with database.session() as session:
        assert session.get_one(Conversation, cid).assigned_operator_id == won[0]


def test_transfer_release_and_hand_back_only_by_the_owner(database: Database) -> None:
    cid = _handed_over(database)
    ana, ben, off = (
        _operator(database, "ana"),
        _operator(database, "ben"),
        _operator(database, "off", on_shift=False),
    )
    with database.session() as session:
        with pytest.raises(NotAssignedError):
            release(session, cid, ana, T0)  # nobody owns it yet
        claim(session, cid, ana, T0)
    with database.session() as session:
        with pytest.raises(AlreadyClaimedError):
            claim(session, cid, ben, T0)
        with pytest.raises(AlreadyClaimedError):
            transfer(session, cid, ben, ana.id, T0)  # ben does not own it
        with pytest.raises(OperatorUnavailableError):
            transfer(session, cid, ana, off.id, T0)
        with pytest.raises(OperatorUnavailableError):
            transfer(session, cid, ana, ana.id, T0)
        with pytest.raises(OperatorNotFoundError):
            transfer(session, cid, ana, 10**9, T0)
        with pytest.raises(ConversationNotFoundError):
            claim(session, uuid.uuid4(), ana, T0)
        assert transfer(session, cid, ana, ben.id, T0 + timedelta(minutes=1)).assigned_operator_id == ben.id
    with database.session() as session:
        released = release(session, cid, ben, T0)
        assert released.assigned_operator_id is None and released.queued_at == T0  # keeps its place
        claim(session, cid, ana, T0)
        back = hand_back(session, cid, ana, T0)
        assert (back.status, back.assigned_operator_id, back.queued_at) == ("open", None, None)
        with pytest.raises(NotWaitingError):
            claim(session, cid, ben, T0)  # open: with the bot again


def test_an_operator_cannot_own_more_than_their_limit(database: Database) -> None:
    busy = _operator(database, "busy", max_concurrent=1)
    first, second = _handed_over(database), _handed_over(database)
    with database.session() as session:
        claim(session, first, busy, T0)
    with pytest.raises(AtCapacityError), database.session() as session:
        claim(session, second, busy, T0)


def test_resolving_stores_the_record_and_closes_the_chat(database: Database) -> None:
    cid = _handed_over(database)
    ana, ben = _operator(database, "ana"), _operator(database, "ben")
    given = ResolutionInput("resolved", ("cancellation", "fee"), "違約金はかかりません。", ("faq-cancel",))
    with database.session() as session:
        claim(session, cid, ana, T0)
        with pytest.raises(AlreadyClaimedError):
            add_operator_message(session, session.get_one(Conversation, cid), ben, "hi")
        reply = add_operator_message(session, session.get_one(Conversation, cid), ana, "確認いたします。")
        assert (reply.role, reply.operator_id) == ("operator", ana.id)
    with pytest.raises(AlreadyClaimedError), database.session() as session:
        resolve(session, cid, ben, given, T0)
    with database.session() as session:
        resolve(session, cid, ana, given, T0)
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        record = session.scalars(select(Resolution)).one()
        assert conversation.status == "closed" and conversation.closed_at == T0
        with pytest.raises(AlreadyResolvedError):
            resolve(session, cid, ana, given, T0)
    assert (record.path, record.operator_id, record.outcome) == ("operator", ana.id, "resolved")
    assert record.tags == ["cancellation", "fee"] and record.answer_source_ids == ["faq-cancel"]
    assert record.answer_text == "違約金はかかりません。"


def _bot_only(database: Database, rating: str | None) -> uuid.UUID:
    with database.session() as session:
        key = issue_key(session, "customer", "c").info
        conversation = open_conversation(session, key, NewConversation())
        question = add_message(session, conversation.id, "customer", "解約の方法は？")
        bot = add_bot_reply(
            session,
            conversation,
            question,
            BotReply("マイページからです。[1]", "answer", 0.9, (), (CITATION,)),
        )
        if rating is not None:
            rate_message(session, conversation, bot.id, rating, None)  # type: ignore[arg-type]
        return conversation.id


def _close_as_customer(database: Database, cid: uuid.UUID) -> Resolution | None:
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        close_conversation(session, conversation, T0)
        return record_customer_close(session, conversation, T0)


def test_a_customer_closing_the_chat_records_how_the_bot_did(database: Database) -> None:
    liked = _close_as_customer(database, _bot_only(database, "up"))
    silent = _close_as_customer(database, _bot_only(database, None))
    disliked = _close_as_customer(database, _bot_only(database, "down"))
    left_a_message = _close_as_customer(database, _handed_over(database, decision="take_message"))
    gave_up_waiting = _close_as_customer(database, _handed_over(database))
    assert liked is not None and (liked.path, liked.outcome, liked.operator_id) == ("bot", "resolved", None)
    assert liked.answer_source_ids == ["faq-cancel"]
    assert silent is not None and silent.outcome == "unresolved"
    assert disliked is not None and disliked.outcome == "unresolved"
    assert left_a_message is not None and left_a_message.outcome == "follow_up"
    assert gave_up_waiting is not None and gave_up_waiting.outcome == "unresolved"


def test_a_chat_the_customer_closes_while_a_person_owns_it_waits_for_their_resolution(
    database: Database,
) -> None:
    cid = _handed_over(database)
    ana = _operator(database, "ana")
    with database.session() as session:
        claim(session, cid, ana, T0)
    assert _close_as_customer(database, cid) is None
    assert _close_as_customer(database, cid) is None  # closing twice changes nothing
    with database.session() as session:
        resolve(session, cid, ana, ResolutionInput("follow_up", ("callback",)), T0 + timedelta(minutes=5))
    with database.session() as session:
        record = session.scalars(select(Resolution)).one()
        assert session.get_one(Conversation, cid).closed_at < T0 + timedelta(
            minutes=5
        )  # the customer's close
    assert (record.path, record.outcome, record.operator_id) == ("operator", "follow_up", ana.id)


def test_the_handoff_packet_has_everything_an_operator_needs(database: Database) -> None:
    with database.session() as session:
        upsert_customer(session, "M-42", name="山田 花子", plan="family", vip=False)
    cid = _handed_over(database, member="M-42")
    ana = _operator(database, "ana")
    with database.session() as session:
        add_note(session, session.get_one(Conversation, cid), ana, "前回も違約金の問い合わせあり", T0)
    with database.session() as session:
        packet = build_packet(session, session.get_one(Conversation, cid), Summarizer(None), None)
    assert packet.customer is not None
    assert (packet.customer.name, packet.customer.plan, packet.customer.vip, packet.customer.source) == (
        "山田 花子",
        "family",
        False,
        "table",
    )
    assert [m.role for m in packet.transcript] == ["customer", "bot", "customer", "bot"]
    answered = packet.attempts[0]
    assert answered.decision == "answer" and answered.confidence == pytest.approx(0.71)
    assert answered.citations[0]["source_id"] == "faq-cancel" and answered.question.startswith("解約したい")
    assert packet.decision == "escalate" and packet.reasons == (
        "low_confidence",
        "sensitive_topic:cancellation",
    )
    assert [n.text for n in packet.notes] == ["前回も違約金の問い合わせあり"] and packet.queue_position == 1
    summary = packet.summary
    assert summary.method == "extractive" and summary.model is None
    # The customer's own first and latest words, what the bot answered from, and why it handed over.
    for part in ("解約したいのですが", "違約金の金額を教えてください", "解約の手続き", "low_confidence"):
        assert part in summary.text


def test_a_generated_summary_comes_from_the_chat_model_and_falls_back_when_it_fails(
    database: Database,
) -> None:
    cid = _handed_over(database)
    written = "お客様は解約時の違約金を知りたい。ボットは手続き方法のみ回答済み。金額の確認が必要。"
    chat = LiteLLMChat("openai/gpt-4o-mini", api_key=SecretStr("sk-test"), options={"mock_response": written})
    broken = LiteLLMChat(
        "openai/gpt-4o-mini",
        api_key=SecretStr("sk-test"),
        retries=0,
        options={"mock_response": "litellm.InternalServerError"},
    )
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        summarizer = Summarizer(chat)
        generated = build_packet(session, conversation, summarizer, None).summary
        again = summarizer.summarize(conversation, (), (), ())  # empty transcript: nothing to generate from
        fallback = build_packet(session, conversation, Summarizer(broken), None).summary
    assert (generated.text, generated.method, generated.model) == (written, "generated", "openai/gpt-4o-mini")
    assert generated.prompt_version and again.method == "extractive"
    assert fallback.method == "extractive" and "違約金の金額" in fallback.text


def test_migration_0002_keeps_existing_chats_and_can_be_undone(database_url: str, tmp_path: object) -> None:
    if database_url.startswith("postgresql"):
        name = f"mdg_mig_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    else:
        name, url = "", f"sqlite:///{tmp_path}/migrate.db"
    try:
        _check_migration_round_trip(url)
    finally:
        if name:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_migration_round_trip(url: str) -> None:
    upgrade(url, "0001")
    database = Database.connect(url)
    try:
        with database.session() as session:
            key = issue_key(session, "customer", "old").info
            session.execute(
                text(
                    "INSERT INTO conversations (id, api_key_id, channel, locale, page_context, status,"
                    " last_seq, created_at, updated_at)"
                    " VALUES (:id, :key, 'web', 'ja', '{}', 'escalated', 1, :t, :t)"
                ),
                {"id": uuid.UUID(int=7).hex, "key": key.id, "t": "2026-11-01 00:00:00"},
            )
            session.execute(
                text(
                    "INSERT INTO messages (conversation_id, seq, role, text, created_at)"
                    " VALUES (:id, 1, 'customer', 'まだ残っていますか', :t)"
                ),
                {"id": uuid.UUID(int=7).hex, "t": "2026-11-01 00:00:00"},
            )
        upgrade(url, "0002")
        with database.session() as session:
            old = session.get_one(Conversation, uuid.UUID(int=7))
            assert old.queued_at is not None and old.priority == 0 and old.assigned_operator_id is None
            assert session.scalar(select(func.count()).select_from(Message)) == 1
        database.dispose()
        command.downgrade(alembic_config(url), "0001")
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM messages")).scalar() == 1
            columns = set(connection.execute(text("SELECT * FROM conversations")).keys())
        assert "assigned_operator_id" not in columns and "priority" not in columns
        upgrade(url, "0002")
    finally:
        database.dispose()

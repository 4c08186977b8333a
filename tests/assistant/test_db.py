"""The database layer on SQLite and PostgreSQL: migrations, numbering, hand-offs, feedback, visibility."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from assistant.answer import Citation
from assistant.db import Database, DatabaseURLError, alembic_config, current_revision, normalize_url, upgrade
from assistant.events import EventHub
from assistant.keys import KeyInfo, issue_key
from assistant.models import Base, Conversation, Escalation, Message, Operator
from assistant.settings import Settings
from assistant.transcripts import (
    BotReply,
    ConversationClosedError,
    ConversationNotFoundError,
    MessageNotFoundError,
    NewConversation,
    NotRateableError,
    add_bot_reply,
    add_message,
    add_served_reply,
    append_message,
    close_conversation,
    conversation_state,
    find_conversation,
    messages_of,
    open_conversation,
    rate_message,
    turn_context,
    upsert_customer,
)


def _key(database: Database, role: str = "customer") -> KeyInfo:
    with database.session() as session:
        return issue_key(session, role, f"test {role}").info  # type: ignore[arg-type]


def _conversation(database: Database, key: KeyInfo, **kwargs: object) -> uuid.UUID:
    with database.session() as session:
        return open_conversation(session, key, NewConversation(**kwargs)).id  # type: ignore[arg-type]


def _head(url: object) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()  # type: ignore[arg-type]


def test_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    assert current_revision(database.engine.url) == _head(database.engine.url)


def test_downgrade_drops_everything_and_upgrade_restores_it(database_url: str) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    database = Database.connect(database_url)
    try:
        assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}
        upgrade(database_url)
        tables = set(inspect(database.engine).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
    finally:
        database.dispose()


def test_upgrade_from_settings_needs_no_alembic_ini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini here
    settings = Settings(home=tmp_path / "home")
    upgrade(settings)
    assert (tmp_path / "home" / "madoguchi.db").exists()
    assert current_revision(settings.database_url) == _head(settings.database_url)
    upgrade(settings)  # a second run is a no-op


def test_sqlite_runs_with_foreign_keys_and_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    database = Database.connect(url)
    try:
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        database.dispose()


def test_database_urls_are_pinned_to_psycopg_or_refused() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(DatabaseURLError, match="mysql"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(ValueError, match="database_url"):
        Settings(database_url="mysql://u@h/db")


def test_settings_put_the_database_and_index_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path.as_posix()}/madoguchi.db"
    assert settings.index_dir == tmp_path / "index"


def test_messages_are_numbered_in_order_and_read_back_intact(database: Database) -> None:
    key = _key(database)
    cid = _conversation(database, key, locale="ja", page_context={"url": "https://example.com/plans"})
    texts = ["料金プランを教えて 📱", "それはいくらですか", "tab\there\nand a newline"]
    with database.session() as session:
        for t in texts:
            add_message(session, cid, "customer", t)
    with database.session() as session:
        messages = messages_of(session, cid)
        conversation = session.get_one(Conversation, cid)
    assert [m.seq for m in messages] == [1, 2, 3]
    assert [m.text for m in messages] == texts
    assert conversation.page_context == {"url": "https://example.com/plans"}
    assert conversation.last_seq == 3
    assert all(m.created_at.utcoffset() == timedelta(0) for m in messages)  # aware, UTC
    assert conversation.created_at <= datetime.now(UTC)


def test_concurrent_messages_get_distinct_consecutive_numbers(database: Database) -> None:
    key = _key(database)
    cid = _conversation(database, key)
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            with database.session() as session:
                add_message(session, cid, "customer", f"message {i}")
        except Exception as exc:  # noqa: BLE001  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with database.session() as session:
        seqs = [m.seq for m in messages_of(session, cid)]
    assert seqs == list(range(1, 17))


def test_a_closed_conversation_takes_no_more_messages(database: Database) -> None:
    key = _key(database)
    cid = _conversation(database, key)
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        close_conversation(session, conversation)
        close_conversation(session, conversation)  # idempotent
    with pytest.raises(ConversationClosedError), database.session() as session:
        add_message(session, cid, "customer", "hello?")
    with database.session() as session:
        assert session.get_one(Conversation, cid).closed_at is not None
        assert messages_of(session, cid) == []


def test_a_handoff_reply_queues_an_escalation(database: Database) -> None:
    key = _key(database)
    cid = _conversation(database, key)
    citation = Citation(number=1, title="解約", url=None, chunk_id="faq-1#0", source_id="faq-1")
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        question = add_message(session, cid, "customer", "解約したい")
        reply = BotReply(
            "担当者におつなぎします。",
            "escalate",
            0.42,
            ("sensitive_topic:cancellation",),
            (citation,),
            "解約したい",
        )
        bot = add_bot_reply(session, conversation, question, reply)
    with database.session() as session:
        escalation = session.scalars(select(Escalation)).one()
        stored = session.get_one(Message, bot.id)
        assert session.get_one(Conversation, cid).status == "escalated"
    assert escalation.conversation_id == cid and escalation.message_id == bot.id
    assert escalation.reasons == ["sensitive_topic:cancellation"] and escalation.confidence == pytest.approx(
        0.42
    )
    assert stored.reply_to_id == question.id and stored.decision == "escalate"
    assert stored.citations == [
        {"number": 1, "title": "解約", "url": None, "chunk_id": "faq-1#0", "source_id": "faq-1"}
    ]


def test_an_answer_keeps_the_conversation_open(database: Database) -> None:
    key = _key(database)
    cid = _conversation(database, key)
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        question = add_message(session, cid, "customer", "営業時間は？")
        add_bot_reply(session, conversation, question, BotReply("9時から18時です。", "answer", 0.97, ()))
    with database.session() as session:
        assert session.get_one(Conversation, cid).status == "open"
        assert session.scalar(select(func.count()).select_from(Escalation)) == 0


def _stored_columns(message: Message) -> dict[str, object]:
    columns = ("seq", "role", "text", "reply_to_id", "decision", "confidence", "reasons", "citations",
               "search_query", "retrieved", "operator_id")
    return {name: getattr(message, name) for name in columns}


def test_the_turns_core_statements_store_what_the_orm_path_stores(database: Database) -> None:
    key = _key(database)
    orm, core = _conversation(database, key), _conversation(database, key)
    citation = Citation(number=1, title="営業時間", url="https://x.example/hours", chunk_id="faq-9#0",
                        source_id="faq-9")
    reply = BotReply("9時から18時です。[1]", "answer", 0.97, ("confident",), (citation,), "営業時間は？",
                     ("faq-9", "faq-2"))
    with database.session() as session:
        question = add_message(session, orm, "customer", "営業時間は？")
        add_bot_reply(session, session.get_one(Conversation, orm), question, reply)
    with database.session() as session:
        asked = append_message(session, core, "customer", "営業時間は？")
        served = add_served_reply(session, core, asked.id, reply)
    assert served is not None and served[1] == "open"
    returned = [_stored_columns(asked), _stored_columns(served[0])]
    with database.session() as session:
        by_orm = [_stored_columns(m) for m in messages_of(session, orm)]
        by_core = [_stored_columns(m) for m in messages_of(session, core)]
        ids = [m.id for m in messages_of(session, core)]
        conversation = session.get_one(Conversation, core)
        assert conversation.last_seq == 2 and conversation.status == "open"
    assert returned == by_core  # what the turn answers with is what was stored
    assert [asked.id, served[0].id] == ids and served[0].reply_to_id == asked.id
    by_core[1]["reply_to_id"] = by_orm[1]["reply_to_id"]  # the two questions' ids differ
    assert by_core == by_orm


def test_a_served_reply_is_refused_when_closed_claimed_or_a_handoff(database: Database) -> None:
    key, operator_key = _key(database), _key(database, "operator")
    closed, claimed = _conversation(database, key), _conversation(database, key)
    answer = BotReply("a", "answer", 0.9, ())
    with database.session() as session:
        asked = {cid: append_message(session, cid, "customer", "q") for cid in (closed, claimed)}
        close_conversation(session, session.get_one(Conversation, closed))
        operator = Operator(api_key_id=operator_key.id, name="佐藤")
        session.add(operator)
        session.flush()
        session.get_one(Conversation, claimed).assigned_operator_id = operator.id
    with database.session() as session:
        assert add_served_reply(session, closed, asked[closed].id, answer) is None
        assert add_served_reply(session, claimed, asked[claimed].id, answer) is None
        with pytest.raises(ValueError, match="add_bot_reply"):
            add_served_reply(session, claimed, asked[claimed].id, BotReply("x", "escalate", 0.1, ()))
    with database.session() as session:
        for cid in (closed, claimed):  # nothing written, no number spent
            assert [m.seq for m in messages_of(session, cid)] == [1]
            assert session.get_one(Conversation, cid).last_seq == 1


def test_messages_stored_by_core_statements_wake_live_streams(database: Database) -> None:
    key = _key(database)
    cid = _conversation(database, key)
    hub = EventHub()
    hub.start(database)

    def write() -> None:
        with database.session() as session:
            asked = append_message(session, cid, "customer", "q")
            add_served_reply(session, cid, asked.id, BotReply("a", "answer", 0.9, ()))

    async def woken() -> bool:
        subscription = hub.subscribe(str(cid))
        try:
            await asyncio.to_thread(write)
            return await subscription.wait(5)
        finally:
            subscription.close()

    try:
        assert asyncio.run(woken()) is True
    finally:
        hub.stop()


def test_feedback_is_one_rating_per_bot_reply(database: Database) -> None:
    key = _key(database)
    cid, other = _conversation(database, key), _conversation(database, key)
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        question = add_message(session, cid, "customer", "q")
        bot = add_bot_reply(session, conversation, question, BotReply("a", "answer", 0.9, ()))
        rate_message(session, conversation, bot.id, "up", None)
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        rate_message(session, conversation, bot.id, "down", "wrong plan")
        with pytest.raises(NotRateableError):
            rate_message(session, conversation, question.id, "up", None)
        with pytest.raises(MessageNotFoundError):
            rate_message(session, session.get_one(Conversation, other), bot.id, "up", None)
        context = turn_context(session, conversation, add_message(session, cid, "customer", "again"), 10)
    assert context.thumbs_down == 1
    assert context.history == (("customer", "q"), ("bot", "a"))


def test_turn_context_knows_vip_members_and_the_queue(database: Database) -> None:
    key = _key(database)
    with database.session() as session:
        upsert_customer(session, "M-1", name="山田", plan="gold", vip=True)
    cid = _conversation(database, key, member_id="M-1")
    waiting = _conversation(database, key, member_id="M-2")
    with database.session() as session:
        session.get_one(Conversation, waiting).status = "escalated"
    with database.session() as session:
        conversation = session.get_one(Conversation, cid)
        earlier = [add_message(session, cid, "customer", f"m{i}") for i in range(5)]
        context = turn_context(session, conversation, earlier[-1], limit=3)
    assert context.vip is True and context.queue_length == 1
    assert context.history == (("customer", "m1"), ("customer", "m2"), ("customer", "m3"))


def test_customer_keys_see_only_their_own_conversations(database: Database) -> None:
    mine, theirs, operator = _key(database), _key(database), _key(database, "operator")
    cid = _conversation(database, mine)
    with database.session() as session:
        assert find_conversation(session, cid, mine).id == cid
        assert find_conversation(session, cid, operator).id == cid
        with pytest.raises(ConversationNotFoundError):
            find_conversation(session, cid, theirs)
        with pytest.raises(ConversationNotFoundError):
            find_conversation(session, uuid.uuid4(), operator)
        assert conversation_state(session, cid, mine).id == cid
        assert conversation_state(session, cid, operator).status == "open"
        with pytest.raises(ConversationNotFoundError):
            conversation_state(session, cid, theirs)
        with pytest.raises(ConversationNotFoundError):
            conversation_state(session, uuid.uuid4(), operator)


def test_a_member_opening_two_conversations_is_one_customer(database: Database) -> None:
    key = _key(database)
    _conversation(database, key, member_id="M-7")
    _conversation(database, key, member_id="M-7")
    with database.session() as session:
        assert session.scalar(text("SELECT count(*) FROM customers")) == 1


@pytest.mark.skipif(os.name != "posix", reason="file permissions")
def test_sqlite_folder_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'm.db'}"
    upgrade(url)
    assert (tmp_path / "a" / "b" / "m.db").exists()


def test_a_sqlite_file_keeps_a_connection_for_every_worker_thread(tmp_path: Path) -> None:
    """As many sessions at once as FastAPI has worker threads: none waits for a connection, and the
    connections are kept for the next crowd (SQLAlchemy's default pool, 5 + 10 overflow, made the
    rest wait and closed every overflow connection on return)."""
    from sqlalchemy import event

    from assistant.db import SQLITE_POOL_SIZE

    database = Database.connect(f"sqlite:///{tmp_path / 'crowd.db'}")
    opened: list[int] = []
    event.listen(database.engine, "connect", lambda *_: opened.append(1))
    crowd = SQLITE_POOL_SIZE
    all_in = threading.Barrier(crowd, timeout=20)
    failures: list[BaseException] = []

    def hold_a_session() -> None:
        try:
            # A checked-out connection, no transaction (every transaction here takes the write lock).
            with database.engine.connect():
                all_in.wait()  # broken (and raises) unless every thread got its connection
        except BaseException as exc:  # noqa: BLE001 -- reported below
            failures.append(exc)

    try:
        for _ in range(2):
            threads = [threading.Thread(target=hold_a_session) for _ in range(crowd)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            all_in.reset()
        assert not failures, failures[:3]
        assert len(opened) == crowd  # the second crowd reused the first crowd's connections
    finally:
        database.dispose()

"""The content audit counts what turns retrieved (``messages.retrieved``), not only what they cited, and
audits manuals beside FAQ entries: the small test knowledge base with its manuals, real replies stored
through ``assistant.transcripts`` on each database backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from assistant.answer import Citation
from assistant.db import Database
from assistant.keys import issue_key
from assistant.models import Feedback, Message
from assistant.transcripts import BotReply, NewConversation, add_bot_reply, add_message, open_conversation
from assistant.voc.audit import AuditConfig, audit_content

APN_MANUAL = "manual:manuals/apn-guide"
ROAMING_MANUAL = "manual:manuals/roaming"


def _reply(database: Database, reply: BotReply, rating: str | None = None) -> int:
    with database.session() as session:
        key = issue_key(session, "customer", "site").info
        conversation = open_conversation(session, key, NewConversation())
        asked = add_message(session, conversation.id, "customer", "質問")
        message = add_bot_reply(session, conversation, asked, reply)
        if rating:
            session.add(Feedback(message_id=message.id, conversation_id=conversation.id, rating=rating))
        return message.id


def _cite(index: Any, source_id: str) -> Citation:
    chunk = next(c for c in index.chunks if c.source_id == source_id)
    return Citation(1, chunk.display_title, chunk.url, chunk.id, source_id)


def test_the_audit_counts_retrievals_and_audits_manuals(database: Database, knowledge_index: Any) -> None:
    # retrieved but not cited: cancel and the roaming manual are seen by search, not unseen
    handoff = BotReply("…", "escalate", 0.2, ("low_confidence",), retrieved=("cancel", ROAMING_MANUAL))
    _reply(database, handoff)
    # an answer from the APN manual, three times, each with a thumbs down: a failing manual
    for _ in range(3):
        _reply(database, BotReply("APNは…", "answer", 0.8, (), (_cite(knowledge_index, APN_MANUAL),),
                                  retrieved=(APN_MANUAL, "apn-android")), rating="down")  # fmt: skip
    # a reply from before migration 0004 (no retrievals logged): its citation stands for them
    old = _reply(database, BotReply("支払いは…", "answer", 0.9, (), (_cite(knowledge_index, "pay-method"),)))
    with database.session() as session:
        session.execute(update(Message).where(Message.id == old).values(retrieved=None))

    now = datetime.now(UTC)
    config = AuditConfig(unseen_days=1, stale_days=365, min_answers=3, fail_rate=0.5)
    with database.session() as session:
        report = audit_content(session, knowledge_index, now, config)

    uses = {u.faq_id: u for u in report.unseen + report.failing}
    assert report.entries == 6 and report.manuals == 3
    unseen = {u.faq_id for u in report.unseen}
    assert unseen == {"sim-activation", "cancel-en", "receipt", "manual:manuals/notice"}
    assert all(u.shown == 0 and u.retrieved == 0 for u in report.unseen)
    assert [u.kind for u in report.unseen][-1] == "manual"  # FAQ entries first, then manuals
    assert [u.faq_id for u in report.failing] == [APN_MANUAL]
    failing = uses[APN_MANUAL]
    assert (failing.kind, failing.answered, failing.failed, failing.retrieved) == ("manual", 3, 3, 3)
    # stale: updated before the cutoff, FAQ entries and manuals alike
    cutoff = (now - timedelta(days=config.stale_days)).date().isoformat()
    expected = {c.source_id for c in knowledge_index.chunks if c.updated_at and c.updated_at < cutoff}
    assert {u.faq_id for u in report.stale} == expected and "apn-android" in expected

"""Knowledge gaps and the content audit on real conversations (stored through ``assistant.transcripts``),
the demo knowledge base's FAQ indexed with the real default embedder, on each database backend."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from assistant.answer import Citation
from assistant.db import Database
from assistant.keys import KeyInfo, issue_key
from assistant.models import Conversation, Feedback, Message
from assistant.transcripts import BotReply, NewConversation, add_bot_reply, add_message, open_conversation
from assistant.voc.audit import AuditConfig, audit_content, faq_chunks, near_duplicates
from assistant.voc.gaps import calibrated_threshold, failed_questions, find_gaps
from index.chunk import faq_chunk
from index.ingest import load_sources
from index.search import KnowledgeIndex
from tests.assistant.seams import Api
from tests.conftest import REPO

POINTS = [
    "ポイントの有効期限はいつまでですか",
    "ポイントっていつ失効しますか",
    "貯まったポイントの期限を知りたい",
]
AREA = ["5Gが使えるエリアを教えて", "5Gの対応エリアはどこですか", "自宅が5Gエリアか知りたい"]
ABROAD = ["国際電話の料金はいくらですか", "海外に電話をかけるといくらかかりますか", "国際通話の料金を教えて"]


@pytest.fixture(scope="module")
def demo_faq(cached_embedder: Any) -> KnowledgeIndex:
    """The demo knowledge base's FAQ entries, indexed in memory (vectors from the embedding cache)."""
    entries = [d.payload for d in load_sources([REPO / "demo" / "kb"]) if d.kind == "faq"]
    return KnowledgeIndex.from_chunks([faq_chunk(e) for e in entries], cached_embedder)


def _key(database: Database) -> KeyInfo:
    with database.session() as session:
        return issue_key(session, "customer", "site").info


def _chat(database: Database, key: KeyInfo, question: str, reply: BotReply, rating: str | None = None) -> int:
    """One customer question and the bot's stored reply; returns the reply's id."""
    with database.session() as session:
        conversation = open_conversation(session, key, NewConversation())
        asked = add_message(session, conversation.id, "customer", question)
        answer = add_bot_reply(session, conversation, asked, reply)
        if rating:
            session.add(Feedback(message_id=answer.id, conversation_id=conversation.id, rating=rating))
        return answer.id


def _cite(index: KnowledgeIndex, source_id: str) -> Citation:
    chunk = next(c for c in index.chunks if c.source_id == source_id)
    return Citation(1, chunk.display_title, chunk.url, chunk.id, source_id)


def test_failed_questions_cluster_into_gaps_with_their_nearest_entry(
    database: Database, demo_faq: KnowledgeIndex
) -> None:
    key = _key(database)
    handoff = BotReply("担当者におつなぎします。", "escalate", 0.2, ("low_confidence",))
    for text in POINTS + AREA:
        _chat(database, key, text, handoff)
    unsure = BotReply("通話料は…", "answer", 0.3, (), (_cite(demo_faq, "call-rates"),))
    for text in ABROAD:
        _chat(database, key, text, unsure)
    _chat(
        database,
        key,
        "担当者と話したいです",
        BotReply("おつなぎします。", "escalate", 0.9, ("human_requested",)),
    )
    good = BotReply("開通は…", "answer", 0.95, (), (_cite(demo_faq, "call-rates"),))
    _chat(database, key, "通話料はいくらですか", good)
    _chat(database, key, "SMSの料金は?", good, rating="down")

    now = datetime.now(UTC)
    with database.session() as session:
        failed = failed_questions(session, now - timedelta(days=1), now, low_confidence=0.5)
    by_text = {q.text: q.reasons for q in failed}
    assert set(by_text) == {*POINTS, *AREA, *ABROAD, "SMSの料金は?"}  # the request for a person is no gap
    assert by_text[POINTS[0]] == ("escalated", "low_confidence")
    assert by_text[ABROAD[0]] == ("low_confidence",) and by_text["SMSの料金は?"] == ("thumbs_down",)

    assert calibrated_threshold(demo_faq) is not None  # the demo KB has enough variations to calibrate
    gaps = find_gaps(failed, demo_faq)
    clusters = [set(g.examples) for g in gaps if g.size > 1]
    assert set(POINTS) in clusters and set(AREA) in clusters and any(set(ABROAD) <= c for c in clusters)
    area = next(g for g in gaps if set(g.examples) == set(AREA))
    assert area.size == 3 and area.nearest_faq_id == "5g-usage" and dict(area.reasons)["escalated"] == 3


def test_gaps_cluster_without_calibration_data_too(
    knowledge_index: KnowledgeIndex, database: Database
) -> None:
    # The small test KB has too few variations to calibrate on: HDBSCAN takes over.
    assert calibrated_threshold(knowledge_index) is None
    key = _key(database)
    for text in POINTS + AREA:
        _chat(database, key, text, BotReply("…", "take_message", 0.1, ("low_confidence",)))
    now = datetime.now(UTC)
    with database.session() as session:
        failed = failed_questions(session, now - timedelta(hours=1), now, low_confidence=0.5)
    gaps = find_gaps(failed, knowledge_index)
    assert sorted(sorted(g.examples) for g in gaps) == sorted([sorted(POINTS), sorted(AREA)])


def test_the_audit_finds_failing_unseen_stale_and_duplicate_entries(
    database: Database, demo_faq: KnowledgeIndex, cached_embedder: Any
) -> None:
    key = _key(database)
    handoff = BotReply("おつなぎします。", "escalate", 0.3, ("low_confidence",))
    for text in ABROAD:  # answered from call-rates, then handed over: failing
        reply = _chat(
            database, key, text, BotReply("通話料は…", "answer", 0.7, (), (_cite(demo_faq, "call-rates"),))
        )
        with database.session() as session:
            conversation = session.get_one(Conversation, session.get_one(Message, reply).conversation_id)
            asked = add_message(session, conversation.id, "customer", "よくわかりません")
            add_bot_reply(session, conversation, asked, handoff)
    for _ in range(3):  # answered from 5g-usage, fine; its search also found sim-size, never cited
        cited = (_cite(demo_faq, "5g-usage"),)
        found = ("5g-usage", "sim-size")
        _chat(database, key, "5Gの使い方", BotReply("5Gは…", "answer", 0.9, (), cited, None, found))

    dates = sorted(c.updated_at for c in faq_chunks(demo_faq) if c.updated_at)
    middle = datetime.fromisoformat(dates[len(dates) // 2]).replace(tzinfo=UTC)
    now = datetime.now(UTC)
    config = AuditConfig(unseen_days=1, stale_days=(now - middle).days, min_answers=3, fail_rate=0.5)
    with database.session() as session:
        report = audit_content(session, demo_faq, now, config)
    assert [u.faq_id for u in report.failing] == ["call-rates"]
    assert report.failing[0].answered == 3 and report.failing[0].failed == 3
    unseen = {u.faq_id for u in report.unseen}
    assert "call-rates" not in unseen and "5g-usage" not in unseen
    assert len(unseen) == report.entries - 3
    assert [(u.faq_id, u.retrieved, u.shown) for u in report.unshown] == [("sim-size", 3, 0)]
    cutoff = (now - timedelta(days=config.stale_days)).date().isoformat()
    assert {u.faq_id for u in report.stale} == {
        c.source_id for c in faq_chunks(demo_faq) if c.updated_at and c.updated_at < cutoff
    }
    assert report.stale

    # A copy of an entry with its question barely reworded is a near-duplicate of the original.
    original = next(c for c in faq_chunks(demo_faq) if c.source_id == "call-rates")
    copy = replace(
        original,
        id="faq:call-rates-copy",
        source_id="call-rates-copy",
        question=original.question.replace("?", "").replace("?", "") + "教えてください",
    )
    doubled = KnowledgeIndex.from_chunks([*demo_faq.chunks, copy], cached_embedder)
    pairs, _ = near_duplicates(doubled)
    assert {"call-rates", "call-rates-copy"} in [{p.faq_id, p.other_id} for p in pairs]
    clean, _ = near_duplicates(demo_faq)
    assert len(clean) < len(pairs)


def test_gaps_and_audit_through_the_api(api: Api) -> None:
    key = api.services.database
    with key.session() as session:
        site = issue_key(session, "customer", "site2").info
    for text in POINTS + AREA:
        _chat(key, site, text, BotReply("…", "escalate", 0.1, ("low_confidence",)))
    api.clock.now = datetime.now(UTC)
    response = api.client.get("/v1/voc/gaps?days=1", headers=api.headers("operator"))
    assert response.status_code == 200, response.text
    gaps = response.json()
    assert sorted(sorted(g["examples"]) for g in gaps) == sorted([sorted(POINTS), sorted(AREA)])
    assert all(g["size"] == 3 and g["reasons"] == {"escalated": 3, "low_confidence": 3} for g in gaps)
    assert all(g["nearest_faq_id"] for g in gaps)
    audit = api.client.get("/v1/voc/audit?unseen_days=1&stale_days=30", headers=api.headers("admin"))
    assert audit.status_code == 200, audit.text
    body = audit.json()
    index = api.services.responder.index
    assert body["entries"] == len(faq_chunks(index))
    assert body["manuals"] == len({c.source_id for c in index.chunks if c.kind != "faq"}) > 0
    assert len(body["unseen"]) == body["entries"] + body["manuals"] and body["unshown"] == []
    assert {u["kind"] for u in body["unseen"]} >= {"faq"} and all(u["retrieved"] == 0 for u in body["unseen"])
    assert api.client.get("/v1/voc/gaps", headers=api.headers("customer")).status_code == 403
    assert api.client.get("/v1/voc/gaps?days=0", headers=api.headers("admin")).status_code == 422
    assert api.client.get("/v1/voc/audit?stale_days=x", headers=api.headers("admin")).status_code == 422

"""Datasets and end-to-end metrics from the product's records, on a real migrated SQLite database."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant.cli import app
from assistant.db import Database, upgrade
from assistant.models import (
    ApiKey,
    Conversation,
    Feedback,
    Message,
    Operator,
    OperatorDelivery,
    Resolution,
    SuggestionSet,
    SurveyResponse,
)
from eval.datasets import EXAMPLE_FEATURES, DatasetError
from eval.metrics.e2e import e2e_report
from eval.records import (
    SUGGESTION_FEATURES,
    build_records_dataset,
    conversation_outcomes,
    suggestion_report,
    suggestion_rows,
    turn_latencies,
)

NOW = datetime(2026, 11, 18, 1, 0, tzinfo=UTC)


def _chat(session, key_id: int, turns: list[tuple[str, str, dict]], status: str = "closed") -> Conversation:  # type: ignore[no-untyped-def]
    conv = Conversation(id=uuid.uuid4(), api_key_id=key_id, status=status, last_seq=len(turns))
    session.add(conv)
    session.flush()
    previous = None
    for seq, (role, text, extra) in enumerate(turns, start=1):
        msg = Message(conversation_id=conv.id, seq=seq, role=role, text=text, **extra)
        if role == "bot" and previous is not None:
            msg.reply_to_id = previous.id
        session.add(msg)
        session.flush()
        previous = msg if role == "customer" else previous
    return conv


@pytest.fixture
def database(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'madoguchi.db'}"
    upgrade(url)
    db = Database.connect(url)
    cited = {
        "decision": "answer",
        "confidence": 0.9,
        "citations": [{"number": 1, "source_id": "sim-activation"}],
    }
    with db.session() as s:
        key = ApiKey(role="operator", name="op", prefix="mdg_op", key_hash="h" * 64)
        s.add(key)
        s.flush()
        op = Operator(api_key_id=key.id, name="Sato")
        s.add(op)
        s.flush()
        # 1: the bot answered, thumbs up, resolved by the bot, survey says resolved (verified).
        c1 = _chat(s, key.id, [("customer", "SIMが届いた", {}), ("bot", "開通手続きは...", cited)])
        s.add(
            Feedback(
                message_id=s.query(Message).filter_by(conversation_id=c1.id, role="bot").one().id,
                conversation_id=c1.id,
                rating="up",
            )
        )
        s.add(
            Resolution(
                conversation_id=c1.id,
                path="bot",
                outcome="resolved",
                answer_text="開通手続きは...",
                answer_source_ids=["sim-activation"],
            )
        )
        s.add(SurveyResponse(conversation_id=c1.id, path="bot", csat=5, resolved=True))
        # 2: the bot answered wrongly (survey: not resolved); then a person resolved it without a source.
        c2 = _chat(
            s,
            key.id,
            [
                ("customer", "請求がおかしい", {}),
                ("bot", "料金プランは...", cited),
                ("operator", "確認して返金します", {"operator_id": op.id}),
            ],
        )
        s.add(
            Resolution(
                conversation_id=c2.id,
                operator_id=op.id,
                path="operator",
                outcome="resolved",
                answer_text="確認して返金します",
                answer_source_ids=[],
            )
        )
        s.add(SurveyResponse(conversation_id=c2.id, path="operator", csat=3, resolved=True))
        # 3: still open; the bot answer got a thumbs-down.
        c3 = _chat(s, key.id, [("customer", "eSIMの設定", {}), ("bot", "eSIMは...", cited)], status="open")
        bot3 = s.query(Message).filter_by(conversation_id=c3.id, role="bot").one()
        s.add(Feedback(message_id=bot3.id, conversation_id=c3.id, rating="down"))
        # Suggested replies in conversation 2: draft 0 edited and delivered.
        question = s.query(Message).filter_by(conversation_id=c2.id, role="customer").one()
        sset = SuggestionSet(
            conversation_id=c2.id,
            for_message_id=question.id,
            outcome="edited",
            chosen_index=0,
            edit_similarity=0.8,
            drafts=[{"text": "返金します", "source_id": "refund"}, {"text": "プランは", "source_id": "plan"}],
        )
        s.add(sset)
        s.flush()
        s.add(
            OperatorDelivery(
                conversation_id=c2.id,
                operator_id=op.id,
                text="確認して返金します",
                status="delivered",
                deliver_at=NOW,
                delivered_at=NOW + timedelta(seconds=5),
                suggestion_set_id=sset.id,
                draft_index=0,
            )
        )
    yield db
    db.dispose()


def test_resolved_chats_become_replayable_examples(database: Database) -> None:
    built = build_records_dataset(database, "chats")
    assert built.dataset.features == EXAMPLE_FEATURES
    rows = {r["question"]: r for r in built.dataset.to_list()}
    assert (
        rows["SIMが届いた"]["expected_sources"] == ["sim-activation"]
        and not rows["SIMが届いた"]["should_escalate"]
    )
    person = rows["請求がおかしい"]
    assert person["should_escalate"] and person["reference_answer"] == "確認して返金します"
    assert build_records_dataset(database, "chats").fingerprint == built.fingerprint


def test_answers_are_labelled_by_thumbs_then_surveys(database: Database) -> None:
    rows = {r["question"]: r for r in build_records_dataset(database, "labels").dataset.to_list()}
    assert rows["SIMが届いた"]["group"] == "thumbs" and rows["SIMが届いた"]["expected_sources"] == [
        "sim-activation"
    ]
    assert (
        rows["eSIMの設定"]["should_escalate"] and rows["eSIMの設定"]["expected_reason"] == "negative_feedback"
    )
    # The operator-path survey does not judge the bot's answer in conversation 2.
    assert "請求がおかしい" not in rows


def test_suggestion_use_and_end_to_end_metrics(database: Database) -> None:
    built = build_records_dataset(database, "suggestions")
    assert built.dataset.features == SUGGESTION_FEATURES
    (row,) = built.dataset.to_list()
    assert (
        row["outcome"] == "edited"
        and row["sent_text"] == "確認して返金します"
        and row["draft_sources"][0] == "refund"
    )
    with database.session() as session:
        report = suggestion_report(suggestion_rows(session))
        outcomes = conversation_outcomes(session)
    assert report["suggestions_edited"] == 1.0 and report["suggestions_edit_similarity"] == pytest.approx(0.8)
    e2e = e2e_report(outcomes)
    assert e2e["closed"] == 2 and e2e["automation_rate"] == 0.5 and e2e["verified_resolution_rate"] == 0.5
    assert e2e["csat_bot"] == 5.0 and e2e["csat_operator"] == 3.0
    with pytest.raises(DatasetError, match="unknown record kind"):
        build_records_dataset(database, "nope")
    assert math.isnan(suggestion_report([])["suggestions_used"])


def test_cli_e2e_reads_the_configured_database(database: Database, tmp_path: Path) -> None:
    url = str(database.engine.url)
    done = CliRunner().invoke(
        app, ["eval", "e2e", "--json", "--no-track"], env={"MADOGUCHI_DATABASE_URL": url}
    )
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["automation_rate"] == 0.5
    assert report["turns"] == 3 and report["turns_bot_n"] == 2 and report["turns_operator_n"] == 1
    assert report["turn_latency_ms_p50"] >= 0 and "turn_latency_ms_operator_p99" in report
    out = tmp_path / "labels"
    built = CliRunner().invoke(
        app,
        ["eval", "datasets", "build", "--records", "labels", "--out", str(out)],
        env={"MADOGUCHI_DATABASE_URL": url},
    )
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["rows"] == 2


def test_turn_latency_percentiles_by_path(tmp_path: Path) -> None:
    """Customer message -> the bot reply that names it (reply_to_id), on a migrated SQLite file."""
    url = f"sqlite:///{tmp_path / 'latency.db'}"
    upgrade(url)
    db = Database.connect(url)
    at = NOW

    def conversation(s, key_id: int, path: str, turns: list[tuple[float | None, float | None]]) -> None:  # type: ignore[no-untyped-def]
        """``turns``: (customer message at second s, bot reply ms later); None leaves one side out."""
        conv = Conversation(id=uuid.uuid4(), api_key_id=key_id, status="closed", last_seq=0)
        s.add(conv)
        s.flush()
        s.add(Resolution(conversation_id=conv.id, path=path, outcome="resolved"))
        for second, reply_ms in turns:
            conv.last_seq += 1
            asked = at + timedelta(seconds=second or 0)
            if second is None:  # a bot message that answers nothing (a greeting)
                s.add(
                    Message(conversation_id=conv.id, seq=conv.last_seq, role="bot", text="hi", created_at=at)
                )
                continue
            question = Message(
                conversation_id=conv.id, seq=conv.last_seq, role="customer", text="q", created_at=asked
            )
            s.add(question)
            s.flush()
            if reply_ms is not None:
                conv.last_seq += 1
                s.add(
                    Message(
                        conversation_id=conv.id,
                        seq=conv.last_seq,
                        role="bot",
                        text="a",
                        reply_to_id=question.id,
                        created_at=asked + timedelta(milliseconds=reply_ms),
                    )
                )

    with db.session() as s:
        key = ApiKey(role="customer", name="c", prefix="mdg_c", key_hash="c" * 64)
        s.add(key)
        s.flush()
        conversation(s, key.id, "bot", [(None, None), (0, 100), (10, 200), (20, 300)])
        conversation(s, key.id, "operator", [(0, 1000), (30, None)])  # the second question got a person
    with db.session() as s:
        turns = turn_latencies(s)
    db.dispose()
    assert sorted((t.path, round(t.milliseconds)) for t in turns) == [
        ("bot", 100),
        ("bot", 200),
        ("bot", 300),
        ("operator", 1000),
    ]
    report = e2e_report([], turns)
    # Linear interpolation: all four [100, 200, 300, 1000]: p50 = 250, p95 at rank 2.85 = 300 + 0.85 * 700,
    # p99 at rank 2.97 = 300 + 0.97 * 700; the bot's three: 200, 200 + 0.9 * 100, 200 + 0.98 * 100.
    expected = {
        "turns": 4,
        "turn_latency_ms_p50": 250,
        "turn_latency_ms_p95": 895,
        "turn_latency_ms_p99": 979,
        "turns_bot_n": 3,
        "turn_latency_ms_bot_p50": 200,
        "turn_latency_ms_bot_p95": 290,
        "turn_latency_ms_bot_p99": 298,
        "turns_operator_n": 1,
        "turn_latency_ms_operator_p50": 1000,
        "turn_latency_ms_operator_p95": 1000,
        "turn_latency_ms_operator_p99": 1000,
    }
    assert {k: report[k] for k in expected} == pytest.approx(expected)
    assert "turns" not in e2e_report([])  # no latencies asked for, none reported

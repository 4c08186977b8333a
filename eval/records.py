"""Datasets and end-to-end metrics from the product's own records (the database).

- ``chats``: resolved conversations (``resolutions`` with outcome ``resolved``): the customer's first
  question, the answer that solved it, its sources; a chat resolved by a person from no knowledge
  source is one the bot should have handed over (``should_escalate``).
- ``labels``: the bot's answers labelled right or wrong by the customer: a thumbs-up or -down on the
  answer, else the post-chat survey of a chat the bot handled alone (``resolved`` yes/no). A right
  answer expects its cited sources; a wrong one expects none and should have gone to a person
  (reason ``negative_feedback`` or ``survey_unresolved``). Same features as every replayable example,
  so ``madoguchi eval calibrate --dataset`` can fit the confidence model on them.
- ``suggestions``: the operators' use of suggested replies (used, edited with a similarity, ignored).
- ``conversation_outcomes``: the closed conversations for ``eval.metrics.e2e`` (automation rate,
  verified resolution rate, CSAT by path).
- ``turn_latencies``: for every bot reply, the time from the customer message it answers
  (``messages.reply_to_id``) to the reply, with the conversation's path (turn latency percentiles).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from datasets import Features, List, Value
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from assistant.db import Database
from assistant.models import (
    Conversation,
    Feedback,
    Message,
    OperatorDelivery,
    Resolution,
    SuggestionSet,
    SurveyResponse,
)
from eval.datasets import BuiltDataset, DatasetError, build_dataset, example
from eval.metrics.e2e import ConversationOutcome, TurnLatency

RECORD_KINDS = ("chats", "labels", "suggestions")

SUGGESTION_FEATURES = Features(
    {
        "id": Value("string"),
        "conversation_id": Value("string"),
        "question": Value("string"),
        "drafts": List(Value("string")),
        "draft_sources": List(Value("string")),
        "outcome": Value("string"),  # used | edited | ignored
        "chosen_index": Value("int32"),  # -1: none chosen
        "edit_similarity": Value("float32"),  # nan: not edited
        "sent_text": Value("string"),  # what the operator sent ("" if not found)
    }
)


def _messages(session: Session, conversation_ids: Iterable[Any]) -> dict[Any, list[Message]]:
    ids = list(conversation_ids)
    by_conv: dict[Any, list[Message]] = {i: [] for i in ids}
    if ids:
        rows = session.scalars(
            select(Message)
            .where(Message.conversation_id.in_(ids))
            .order_by(Message.conversation_id, Message.seq)
        )
        for m in rows:
            by_conv[m.conversation_id].append(m)
    return by_conv


def _first_customer(messages: list[Message]) -> Message | None:
    return next((m for m in messages if m.role == "customer" and m.text.strip()), None)


def chat_rows(session: Session) -> list[dict[str, Any]]:
    """Resolved chats as replayable examples."""
    resolutions = session.scalars(
        select(Resolution).where(Resolution.outcome == "resolved").order_by(Resolution.id)
    )
    resolutions = list(resolutions)
    messages = _messages(session, (r.conversation_id for r in resolutions))
    rows = []
    for r in resolutions:
        msgs = messages[r.conversation_id]
        first = _first_customer(msgs)
        if first is None:
            continue
        answer = r.answer_text or next(
            (
                m.text
                for m in reversed(msgs)
                if m.role in ("operator", "bot") and m.decision in (None, "answer")
            ),
            "",
        )
        sources = list(dict.fromkeys(r.answer_source_ids or []))
        rows.append(
            example(
                f"chat-{r.conversation_id}",
                first.text.strip(),
                "chats",
                expected_sources=sources,
                should_escalate=r.path == "operator" and not sources,
                expected_reason="" if sources or r.path == "bot" else "no_knowledge",
                reference_answer=answer,
                group=f"{r.path}:{','.join(r.tags or [])}",
            )
        )
    return rows


def _cited(message: Message) -> list[str]:
    return list(dict.fromkeys(str(c.get("source_id")) for c in message.citations or [] if c.get("source_id")))


def label_rows(session: Session) -> list[dict[str, Any]]:
    """The bot's answers the customer judged: thumbs first, else the survey of a bot-only chat."""
    answers = list(
        session.scalars(select(Message).where(Message.role == "bot", Message.decision == "answer"))
    )
    thumbs = {f.message_id: f.rating for f in session.scalars(select(Feedback))}
    surveys = {s.conversation_id: s for s in session.scalars(select(SurveyResponse))}
    questions = {
        m.id: m
        for m in session.scalars(
            select(Message).where(
                Message.id.in_([a.reply_to_id for a in answers if a.reply_to_id is not None])
            )
        )
    }
    rows = []
    for a in sorted(answers, key=lambda m: m.id):
        question = questions.get(a.reply_to_id) if a.reply_to_id is not None else None
        if question is None:
            continue
        if a.id in thumbs:
            right, signal = thumbs[a.id] == "up", "thumbs"
        else:
            survey = surveys.get(a.conversation_id)
            if survey is None or survey.path != "bot" or survey.resolved is None:
                continue
            right, signal = bool(survey.resolved), "survey"
        reason = "" if right else ("negative_feedback" if signal == "thumbs" else "survey_unresolved")
        rows.append(
            example(
                f"label-{a.id}",
                question.text.strip(),
                "labels",
                expected_sources=_cited(a) if right else [],
                should_escalate=not right,
                expected_reason=reason,
                reference_answer=a.text if right else "",
                group=signal,
            )
        )
    return rows


def suggestion_rows(session: Session) -> list[dict[str, Any]]:
    """Suggestion sets whose outcome is known, with what the operator sent."""
    sets = list(
        session.scalars(
            select(SuggestionSet).where(SuggestionSet.outcome.is_not(None)).order_by(SuggestionSet.id)
        )
    )
    questions = {
        m.id: m.text
        for m in session.scalars(select(Message).where(Message.id.in_([s.for_message_id for s in sets])))
    }
    sent: dict[int, str] = {}
    for d in session.scalars(select(OperatorDelivery).where(OperatorDelivery.suggestion_set_id.is_not(None))):
        if d.status == "delivered" and d.suggestion_set_id is not None:
            sent[d.suggestion_set_id] = d.text
    return [
        {
            "id": f"suggestion-{s.id}",
            "conversation_id": str(s.conversation_id),
            "question": questions.get(s.for_message_id, ""),
            "drafts": [str(d.get("text", "")) for d in s.drafts or []],
            "draft_sources": [str(d.get("source_id") or "") for d in s.drafts or []],
            "outcome": str(s.outcome),
            "chosen_index": -1 if s.chosen_index is None else s.chosen_index,
            "edit_similarity": math.nan if s.edit_similarity is None else s.edit_similarity,
            "sent_text": sent.get(s.id, ""),
        }
        for s in sets
    ]


def build_records_dataset(database: Database, kind: str) -> BuiltDataset:
    """The ``chats``, ``labels`` or ``suggestions`` dataset of a database."""
    if kind not in RECORD_KINDS:
        raise DatasetError(f"unknown record kind {kind!r}; choose from {', '.join(RECORD_KINDS)}")
    with database.session() as session:
        if kind == "chats":
            return build_dataset("chats", chat_rows(session))
        if kind == "labels":
            return build_dataset("labels", label_rows(session))
        return build_dataset("suggestions", suggestion_rows(session), SUGGESTION_FEATURES)


def suggestion_report(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Shares of suggestion sets used as is, edited, ignored; mean similarity of the edited ones."""
    rows = list(rows)
    n = len(rows)
    out = {"suggestion_sets": float(n)}
    for outcome in ("used", "edited", "ignored"):
        out[f"suggestions_{outcome}"] = sum(r["outcome"] == outcome for r in rows) / n if n else math.nan
    sims = [
        r["edit_similarity"]
        for r in rows
        if r["outcome"] == "edited" and not math.isnan(r["edit_similarity"])
    ]
    out["suggestions_edit_similarity"] = sum(sims) / len(sims) if sims else math.nan
    return out


def conversation_outcomes(session: Session) -> list[ConversationOutcome]:
    """Every conversation with how it ended: path, outcome, the customer's confirmation, CSAT."""
    resolutions = {r.conversation_id: r for r in session.scalars(select(Resolution))}
    surveys = {s.conversation_id: s for s in session.scalars(select(SurveyResponse))}
    ratings: dict[Any, list[str]] = {}
    for f in session.scalars(select(Feedback)):
        ratings.setdefault(f.conversation_id, []).append(f.rating)
    out = []
    for c in session.scalars(select(Conversation).order_by(Conversation.created_at)):
        r, s, votes = resolutions.get(c.id), surveys.get(c.id), ratings.get(c.id, [])
        path = _path(r, s)
        if s is not None and s.resolved is not None:
            confirmed: bool | None = bool(s.resolved)
        elif votes:
            confirmed = "down" not in votes
        else:
            confirmed = None
        out.append(
            ConversationOutcome(
                conversation_id=str(c.id),
                closed=c.status == "closed" or r is not None,
                path=path,  # type: ignore[arg-type]
                outcome=r.outcome if r is not None else None,
                confirmed=confirmed,
                csat=float(s.csat) if s is not None and s.csat is not None else None,
            )
        )
    return out


def _path(resolution: Resolution | None, survey: SurveyResponse | None) -> str:
    """A conversation's path: its resolution's, else its survey's, else the bot's."""
    if resolution is not None:
        return resolution.path
    return survey.path if survey is not None else "bot"


def turn_latencies(session: Session) -> list[TurnLatency]:
    """Every bot reply's latency (its customer message's ``created_at`` to its own), with the path."""
    resolutions = {r.conversation_id: r for r in session.scalars(select(Resolution))}
    surveys = {s.conversation_id: s for s in session.scalars(select(SurveyResponse))}
    question = aliased(Message)
    rows = session.execute(
        select(Message.conversation_id, question.created_at, Message.created_at)
        .join(question, Message.reply_to_id == question.id)
        .where(Message.role == "bot", question.role == "customer")
        .order_by(Message.id)
    )
    return [
        TurnLatency(
            conversation_id=str(cid),
            path=_path(resolutions.get(cid), surveys.get(cid)),  # type: ignore[arg-type]
            milliseconds=(replied - asked).total_seconds() * 1000,
        )
        for cid, asked, replied in rows
    ]

"""The review queue: failed questions become question variations or new FAQ entries.

1. ``collect_review_items`` queues the questions the bot failed (``assistant.voc.gaps``), once each.
2. A reviewer links an item to the FAQ entry that answers it (``link_item``), drafts a new entry from
   the operator's resolution (``draft_item``: the resolution's answer text, else the operator's last
   message, unless the reviewer writes the answer), or dismisses it.
3. ``apply_changes`` (run by ``madoguchi voc learn``) writes what was decided into the knowledge-base
   folder and updates the index incrementally (``index.build.add_documents``): links are appended to
   ``learned_variations.jsonl`` (read by ``index.ingest`` on every build, so a rebuild keeps them),
   drafts go to ``learned_faq.yaml``, an ordinary FAQ file. The team's own files are never rewritten.
   A running server swaps the new index generation in by itself (``assistant.reload``).

Errors: ``ReviewError`` and its children ``ReviewItemNotFoundError``, ``AlreadyReviewedError``,
``UnknownEntryError`` and ``NothingToDraftError``.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.models import Message, Resolution, ReviewItem
from assistant.voc.gaps import failed_questions
from index.build import UpdateReport, add_documents
from index.embed import Embedder
from index.ingest import LEARNED_VARIATIONS
from index.store import read_sources

LEARNED_FAQ = "learned_faq.yaml"
STATUSES = ("pending", "linked", "drafted", "dismissed")


class ReviewError(Exception):
    """A review action that cannot be done."""


class ReviewItemNotFoundError(ReviewError):
    """No review item with this id."""


class AlreadyReviewedError(ReviewError):
    """The item was already linked, drafted or dismissed."""


class UnknownEntryError(ReviewError):
    """The FAQ entry named is not in the knowledge base."""


class NothingToDraftError(ReviewError):
    """No operator answer to draft an entry from, and the reviewer gave none."""


@dataclass(frozen=True)
class ReviewRecord:
    """A review item as the queue shows it."""

    id: int
    message_id: int
    conversation_id: uuid.UUID
    question: str
    reasons: tuple[str, ...]
    status: str
    faq_id: str | None
    draft_question: str | None
    draft_answer: str | None
    reviewed_at: datetime | None
    applied_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: ReviewItem) -> ReviewRecord:
        """From its database row."""
        return cls(
            row.id, row.message_id, row.conversation_id, row.question, tuple(row.reasons), row.status,
            row.faq_id, row.draft_question, row.draft_answer, row.reviewed_at, row.applied_at, row.created_at,
        )  # fmt: skip


def collect_review_items(
    session: Session, since: datetime, until: datetime, low_confidence: float, now: datetime
) -> int:
    """Queue the failed questions of ``(since, until]`` not queued before; returns how many are new."""
    questions = failed_questions(session, since, until, low_confidence)
    known = set(
        session.scalars(
            select(ReviewItem.message_id).where(ReviewItem.message_id.in_([q.message_id for q in questions]))
        )
    )
    fresh = [q for q in questions if q.message_id not in known]
    session.add_all(
        ReviewItem(
            message_id=q.message_id,
            conversation_id=q.conversation_id,
            question=q.text,
            reasons=list(q.reasons),
            status="pending",
            created_at=now,
        )  # fmt: skip
        for q in fresh
    )
    session.flush()
    return len(fresh)


def list_items(session: Session, status: str | None, limit: int) -> list[ReviewRecord]:
    """Review items, oldest first (a queue), optionally of one status."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {list(STATUSES)}")
    query = select(ReviewItem).order_by(ReviewItem.id).limit(limit)
    if status is not None:
        query = query.where(ReviewItem.status == status)
    return [ReviewRecord.of(r) for r in session.scalars(query)]


def _pending(session: Session, item_id: int) -> ReviewItem:
    item = session.get(ReviewItem, item_id, with_for_update=True)
    if item is None:
        raise ReviewItemNotFoundError(f"no review item {item_id}")
    if item.status != "pending":
        raise AlreadyReviewedError(f"review item {item_id} is already {item.status}")
    return item


def link_item(
    session: Session, item_id: int, faq_id: str, known_ids: Collection[str], reviewer_key_id: int | None,
    now: datetime,
) -> ReviewRecord:  # fmt: skip
    """The question is another way to ask ``faq_id``: it becomes one of its variations."""
    item = _pending(session, item_id)
    if faq_id not in known_ids:
        raise UnknownEntryError(f"no FAQ entry {faq_id!r} in the knowledge base")
    item.status, item.faq_id = "linked", faq_id
    item.reviewer_key_id, item.reviewed_at = reviewer_key_id, now
    session.flush()
    return ReviewRecord.of(item)


def operator_answer(session: Session, conversation_id: uuid.UUID) -> str | None:
    """What the operator answered: the resolution's answer text, else their last message."""
    text = session.scalar(select(Resolution.answer_text).where(Resolution.conversation_id == conversation_id))
    if text and text.strip():
        return text.strip()
    return session.scalar(
        select(Message.text)
        .where(Message.conversation_id == conversation_id, Message.role == "operator")
        .order_by(Message.seq.desc())
        .limit(1)
    )


def draft_item(
    session: Session, item_id: int, question: str | None, answer: str | None, reviewer_key_id: int | None,
    now: datetime,
) -> ReviewRecord:  # fmt: skip
    """Draft a new FAQ entry: the customer's question (or the reviewer's) and the operator's answer."""
    item = _pending(session, item_id)
    answer = answer or operator_answer(session, item.conversation_id)
    if not answer:
        raise NothingToDraftError(f"conversation {item.conversation_id} has no operator answer; write one")
    item.status, item.draft_question, item.draft_answer = "drafted", question or item.question, answer
    item.reviewer_key_id, item.reviewed_at = reviewer_key_id, now
    session.flush()
    return ReviewRecord.of(item)


def dismiss_item(session: Session, item_id: int, reviewer_key_id: int | None, now: datetime) -> ReviewRecord:
    """Nothing to learn from this one (spam, a one-off, already fixed)."""
    item = _pending(session, item_id)
    item.status, item.reviewer_key_id, item.reviewed_at = "dismissed", reviewer_key_id, now
    session.flush()
    return ReviewRecord.of(item)


def unapplied(session: Session) -> list[ReviewRecord]:
    """Links and drafts decided but not yet written into the knowledge base."""
    rows = session.scalars(
        select(ReviewItem)
        .where(ReviewItem.status.in_(("linked", "drafted")), ReviewItem.applied_at.is_(None))
        .order_by(ReviewItem.id)
    )
    return [ReviewRecord.of(r) for r in rows]


def mark_applied(session: Session, item_ids: Sequence[int], now: datetime) -> None:
    """Record that these items are live in the knowledge base."""
    for item_id in item_ids:
        item = session.get(ReviewItem, item_id)
        if item is not None:
            item.applied_at = now


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_learned(kb_dir: Path, items: Sequence[ReviewRecord], now: datetime) -> list[Path]:
    """Append links to the variations overlay and drafts to the learned FAQ file; the files touched."""
    touched = []
    links = [i for i in items if i.status == "linked" and i.faq_id]
    if links:
        overlay = kb_dir / LEARNED_VARIATIONS
        lines = [
            json.dumps(
                {
                    "faq_id": i.faq_id,
                    "variation": i.question,
                    "review_item": i.id,
                    "added_at": now.isoformat(),
                },
                ensure_ascii=False,
            )  # fmt: skip
            for i in links
        ]
        old = overlay.read_text(encoding="utf-8") if overlay.exists() else ""
        _write_atomically(
            overlay, old + ("" if not old or old.endswith("\n") else "\n") + "\n".join(lines) + "\n"
        )
        touched.append(overlay)
    drafts = [i for i in items if i.status == "drafted"]
    if drafts:
        path = kb_dir / LEARNED_FAQ
        entries = (yaml.safe_load(path.read_text(encoding="utf-8")) or []) if path.exists() else []
        entries.extend(
            {
                "id": f"learned-{i.id}",
                "question": i.draft_question,
                "answer": i.draft_answer,
                "updated_at": now.date().isoformat(),
            }  # fmt: skip
            for i in drafts
        )
        _write_atomically(path, yaml.safe_dump(entries, allow_unicode=True, sort_keys=False))
        touched.append(path)
    return touched


def apply_changes(
    kb_dir: Path, index_dir: Path, embedder: Embedder, items: Sequence[ReviewRecord], now: datetime
) -> UpdateReport | None:
    """Write the decided items into ``kb_dir`` and update the index with just the documents they touch."""
    if not items:
        return None
    files = write_learned(kb_dir, items, now)
    sources = read_sources(index_dir)
    linked_files = {Path(sources[i.faq_id].path) for i in items if i.faq_id in sources}
    paths = sorted(linked_files | {f for f in files if f.name == LEARNED_FAQ})
    return add_documents(index_dir, paths, embedder, root=kb_dir)

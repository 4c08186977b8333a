"""Content audit of the knowledge base: sources nobody sees, sources that fail, stale sources, and
near-duplicate FAQ entries.

A source is an FAQ entry or a manual (its chunks grouped by source id; ``kind`` tells which).

- Unseen: in the last ``unseen_days`` never retrieved by a turn's search and never cited by a reply.
  What a turn retrieved is logged in ``messages.retrieved`` (migration 0004: the distinct sources of
  its hits, best first); older replies without it count their citations as their retrievals.
- Unshown: retrieved in that period but never shown (never cited by a reply): the search finds the
  source, but another always wins, or the bot escalates whenever it comes up.
- Failing: answers citing the source first (the source the answer came from) that were followed by a
  hand-off in the same conversation, a thumbs down, or a bad survey (CSAT <= 2 or not resolved), at a
  rate of at least ``fail_rate`` over at least ``min_answers`` answers.
- Stale: ``updated_at`` older than ``stale_days`` (a manual's front matter date, else its file's
  modification date at indexing).
- Near-duplicates: two entries in the same language that are each other's nearest neighbour both by
  question and by answer, with questions closer than the closest quarter of the knowledge base's own
  question-to-variation pairs (calibrated, like the gap clusters; 0.05 cosine distance when there are
  too few variations to calibrate on). On the demo KB (112 entries) this flags 2 pairs; questions
  alone at that threshold flagged 34, mostly siblings (the model's similarities sit in a narrow band).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.models import Escalation, Feedback, Message, SurveyResponse
from assistant.voc.gaps import MIN_CALIBRATION_PAIRS, field_vectors, paraphrase_distances
from index.documents import Chunk
from index.search import KnowledgeIndex

FALLBACK_DUPLICATE_DISTANCE = 0.05


@dataclass(frozen=True)
class AuditConfig:
    """Limits of the audit (defaults from ``assistant.settings.VocSettings``)."""

    unseen_days: int = 30
    stale_days: int = 365
    min_answers: int = 3
    fail_rate: float = 0.5


@dataclass(frozen=True)
class EntryUse:
    """How one source (an FAQ entry or a manual) fared in the audit period."""

    faq_id: str  # the source id: an FAQ entry's id, or a manual's (``manual:...``)
    title: str
    shown: int
    answered: int
    failed: int
    updated_at: str | None
    retrieved: int = 0  # replies whose search found it (cited or not)
    kind: str = "faq"

    @property
    def fail_rate(self) -> float:
        """Failed answers over answers (0 when never the answer)."""
        return self.failed / self.answered if self.answered else 0.0


@dataclass(frozen=True)
class DuplicatePair:
    """Two FAQ entries that ask the same thing."""

    faq_id: str
    other_id: str
    similarity: float


@dataclass(frozen=True)
class AuditReport:
    """The lists of the audit, each sorted most actionable first (FAQ entries and manuals)."""

    entries: int  # FAQ entries
    unseen: tuple[EntryUse, ...]
    unshown: tuple[EntryUse, ...]
    failing: tuple[EntryUse, ...]
    stale: tuple[EntryUse, ...]
    duplicates: tuple[DuplicatePair, ...]
    duplicate_threshold: float
    manuals: int = 0


def faq_chunks(index: KnowledgeIndex) -> list[Chunk]:
    """The index's FAQ entries (one chunk each)."""
    return [c for c in index.chunks if c.kind == "faq"]


@dataclass(frozen=True)
class _Usage:
    shown: Counter[str]
    retrieved: Counter[str]
    answered: Counter[str]
    failed: Counter[str]


def _usage(session: Session, since: datetime) -> _Usage:
    """Shown, retrieved, answered and failed counts per source id over bot replies since ``since``."""
    replies = session.execute(
        select(
            Message.id, Message.conversation_id, Message.created_at, Message.decision, Message.citations,
            Message.retrieved,
        ).where(Message.role == "bot", Message.created_at > since)
    ).all()  # fmt: skip
    down = set(session.scalars(select(Feedback.message_id).where(Feedback.rating == "down")))
    handoffs: dict[object, list[datetime]] = {}
    for cid, at in session.execute(select(Escalation.conversation_id, Escalation.created_at)):
        handoffs.setdefault(cid, []).append(at)
    bad = set(
        session.scalars(
            select(SurveyResponse.conversation_id).where(
                (SurveyResponse.csat <= 2) | (SurveyResponse.resolved.is_(False))
            )
        )
    )
    use = _Usage(Counter(), Counter(), Counter(), Counter())
    for mid, cid, at, decision, citations, retrieved in replies:
        ids = [str(c["source_id"]) for c in citations or [] if c.get("source_id")]
        use.shown.update(set(ids))
        # what was cited was retrieved; replies from before migration 0004 have only their citations
        use.retrieved.update(set(ids) | {str(r) for r in retrieved or []})
        if decision != "answer" or not ids:
            continue
        use.answered[ids[0]] += 1
        if mid in down or cid in bad or any(t >= at for t in handoffs.get(cid, [])):
            use.failed[ids[0]] += 1
    return use


def _sources(index: KnowledgeIndex) -> list[tuple[Chunk, str]]:
    """One chunk per source (the first), with the source's title: FAQ entries, then manuals."""
    first: dict[str, Chunk] = {}
    for c in index.chunks:
        first.setdefault(c.source_id, c)
    faq = [(c, c.display_title) for c in first.values() if c.kind == "faq"]
    manuals = [(c, c.title or c.source_id) for c in first.values() if c.kind != "faq"]
    return faq + manuals


def _is_stale(updated_at: str | None, cutoff: date) -> bool:
    if not updated_at:
        return False
    try:
        return date.fromisoformat(updated_at[:10]) < cutoff
    except ValueError:
        return False


def _faq_field(index: KnowledgeIndex, field: str) -> dict[int, np.ndarray]:
    vectors, positions = field_vectors(index, field)
    return {p: vectors[i] for i, p in enumerate(positions) if index.chunks[p].kind == "faq"}


def near_duplicates(index: KnowledgeIndex) -> tuple[list[DuplicatePair], float]:
    """Pairs of FAQ entries (same language) that are each other's nearest neighbour by question and by
    answer, with questions closer than the calibrated distance. Returns them and the similarity used."""
    distances = paraphrase_distances(index)
    threshold = 1.0 - (
        float(np.quantile(distances, 0.25)) if len(distances) >= MIN_CALIBRATION_PAIRS
        else FALLBACK_DUPLICATE_DISTANCE
    )  # fmt: skip
    questions, answers = _faq_field(index, "question"), _faq_field(index, "answer")
    positions = [p for p in questions if p in answers]
    if len(positions) < 2:
        return [], threshold
    q = np.stack([questions[p] for p in positions])
    a = np.stack([answers[p] for p in positions])
    q_sims, a_sims = q @ q.T, a @ a.T
    np.fill_diagonal(q_sims, -2.0)
    np.fill_diagonal(a_sims, -2.0)
    q_nn, a_nn = q_sims.argmax(axis=1), a_sims.argmax(axis=1)
    pairs = []
    for i, j in enumerate(q_nn):
        j = int(j)
        mutual = i < j and q_nn[j] == i and a_nn[i] == j and a_nn[j] == i
        first, second = index.chunks[positions[i]], index.chunks[positions[j]]
        if mutual and q_sims[i, j] >= threshold and first.language == second.language:
            pairs.append(DuplicatePair(first.source_id, second.source_id, round(float(q_sims[i, j]), 4)))
    pairs.sort(key=lambda p: -p.similarity)
    return pairs, threshold


def audit_content(session: Session, index: KnowledgeIndex, now: datetime, config: AuditConfig) -> AuditReport:
    """Audit every FAQ entry and manual of the index against the conversations of ``unseen_days``."""
    use = _usage(session, now - timedelta(days=config.unseen_days))
    uses = [
        EntryUse(
            c.source_id, title, use.shown[c.source_id], use.answered[c.source_id], use.failed[c.source_id],
            c.updated_at, use.retrieved[c.source_id], c.kind,
        )  # fmt: skip
        for c, title in _sources(index)
    ]
    cutoff = (now - timedelta(days=config.stale_days)).date()
    failing = [u for u in uses if u.answered >= config.min_answers and u.fail_rate >= config.fail_rate]
    duplicates, similarity = near_duplicates(index)
    return AuditReport(
        entries=sum(1 for u in uses if u.kind == "faq"),
        unseen=tuple(sorted((u for u in uses if u.shown == 0 and u.retrieved == 0),
                            key=lambda u: (u.kind != "faq", u.faq_id))),  # fmt: skip
        unshown=tuple(sorted((u for u in uses if u.shown == 0 and u.retrieved > 0),
                             key=lambda u: (-u.retrieved, u.kind != "faq", u.faq_id))),  # fmt: skip
        failing=tuple(sorted(failing, key=lambda u: (-u.fail_rate, -u.answered, u.faq_id))),
        stale=tuple(
            sorted((u for u in uses if _is_stale(u.updated_at, cutoff)), key=lambda u: u.updated_at or "")
        ),
        duplicates=tuple(duplicates),
        duplicate_threshold=round(similarity, 4),
        manuals=sum(1 for u in uses if u.kind != "faq"),
    )

"""Content audit of the FAQ: entries nobody sees, entries that fail, stale entries, near-duplicates.

- Unseen: never cited by a bot reply in the last ``unseen_days`` (what was shown comes from
  ``messages.citations``; retrievals that were not shown are not logged, so "never retrieved" is
  approximated by "never shown").
- Failing: answers citing the entry first (the entry the answer came from) that were followed by a
  hand-off in the same conversation, a thumbs down, or a bad survey (CSAT <= 2 or not resolved), at a
  rate of at least ``fail_rate`` over at least ``min_answers`` answers.
- Stale: ``updated_at`` older than ``stale_days``.
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
    """How one FAQ entry fared in the audit period."""

    faq_id: str
    title: str
    shown: int
    answered: int
    failed: int
    updated_at: str | None

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
    """The four lists of the audit, each sorted most actionable first."""

    entries: int
    unseen: tuple[EntryUse, ...]
    failing: tuple[EntryUse, ...]
    stale: tuple[EntryUse, ...]
    duplicates: tuple[DuplicatePair, ...]
    duplicate_threshold: float


def faq_chunks(index: KnowledgeIndex) -> list[Chunk]:
    """The index's FAQ entries (one chunk each)."""
    return [c for c in index.chunks if c.kind == "faq"]


def _usage(session: Session, since: datetime) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """(shown, answered, failed) counts per source id over bot replies since ``since``."""
    replies = session.execute(
        select(
            Message.id, Message.conversation_id, Message.created_at, Message.decision, Message.citations
        ).where(Message.role == "bot", Message.created_at > since)
    ).all()
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
    shown: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for mid, cid, at, decision, citations in replies:
        ids = [str(c["source_id"]) for c in citations or [] if c.get("source_id")]
        shown.update(set(ids))
        if decision != "answer" or not ids:
            continue
        answered[ids[0]] += 1
        if mid in down or cid in bad or any(t >= at for t in handoffs.get(cid, [])):
            failed[ids[0]] += 1
    return shown, answered, failed


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
    """Audit every FAQ entry of the index against the conversations of the last ``unseen_days``."""
    shown, answered, failed = _usage(session, now - timedelta(days=config.unseen_days))
    uses = [
        EntryUse(
            c.source_id,
            c.display_title,
            shown[c.source_id],
            answered[c.source_id],
            failed[c.source_id],
            c.updated_at,
        )  # fmt: skip
        for c in faq_chunks(index)
    ]
    cutoff = (now - timedelta(days=config.stale_days)).date()
    failing = [u for u in uses if u.answered >= config.min_answers and u.fail_rate >= config.fail_rate]
    duplicates, similarity = near_duplicates(index)
    return AuditReport(
        entries=len(uses),
        unseen=tuple(sorted((u for u in uses if u.shown == 0), key=lambda u: u.faq_id)),
        failing=tuple(sorted(failing, key=lambda u: (-u.fail_rate, -u.answered, u.faq_id))),
        stale=tuple(
            sorted((u for u in uses if _is_stale(u.updated_at, cutoff)), key=lambda u: u.updated_at or "")
        ),
        duplicates=tuple(duplicates),
        duplicate_threshold=round(similarity, 4),
    )

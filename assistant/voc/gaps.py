"""Knowledge gaps: the questions the bot failed, grouped into clusters with the nearest FAQ entry.

A customer question failed when its bot reply handed over to people (not because the customer simply
asked for a person), answered below the ``low_confidence`` threshold, got a thumbs down, or sits in a
conversation whose survey was bad (CSAT <= 2 or "not resolved").

Clustering embeds the questions with the index's own embedder and groups them by average-linkage
agglomerative clustering on cosine distance. The distance threshold is calibrated on the knowledge base:
the 75th percentile of the distances between each FAQ question and its own variations ("as close as
the ways customers already phrase one entry"). Measured on LocalgovFAQ dev queries grouped by their
relevant entry (default model): this rule picks 0.135 on the demo KB, and 0.13 gives the best
adjusted Rand index (0.375) of the thresholds tried, against 0.21-0.31 for HDBSCAN. A knowledge base
with too few variations to calibrate on falls back to HDBSCAN (no threshold at all).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sklearn.cluster import HDBSCAN, AgglomerativeClustering
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from assistant.escalate import HUMAN_REQUESTED
from assistant.models import Feedback, Message, SurveyResponse
from assistant.transcripts import HANDOFF_DECISIONS
from index.search import KnowledgeIndex

MIN_CALIBRATION_PAIRS = 10


@dataclass(frozen=True)
class FailedQuestion:
    """A customer question the bot did not handle well, and why."""

    message_id: int
    conversation_id: uuid.UUID
    text: str
    at: datetime
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Gap:
    """A cluster of failed questions: how many, examples, why they failed, and the nearest FAQ entry."""

    size: int
    examples: tuple[str, ...]
    message_ids: tuple[int, ...]
    reasons: tuple[tuple[str, int], ...]  # (reason, count), most frequent first
    nearest_faq_id: str | None
    nearest_title: str | None
    nearest_score: float | None


def _reasons(
    decision: str | None,
    confidence: float | None,
    bot_reasons: list[str] | None,
    rating: str | None,
    csat: int | None,
    resolved: bool | None,
    low: float,
) -> tuple[str, ...]:
    if HUMAN_REQUESTED in (bot_reasons or []):
        return ()  # the customer asked for a person: not a question the knowledge base missed
    out = []
    if decision in HANDOFF_DECISIONS:
        out.append("escalated")
    if confidence is not None and confidence < low:
        out.append("low_confidence")
    if rating == "down":
        out.append("thumbs_down")
    if (csat is not None and csat <= 2) or resolved is False:
        out.append("bad_survey")
    return tuple(out)


def failed_questions(
    session: Session, since: datetime, until: datetime, low_confidence: float
) -> list[FailedQuestion]:
    """Customer questions asked in ``(since, until]`` whose bot reply failed, oldest first."""
    reply = aliased(Message)
    rows = session.execute(
        select(
            Message.id,
            Message.conversation_id,
            Message.text,
            Message.created_at,
            reply.decision,
            reply.confidence,
            reply.reasons,
            Feedback.rating,
            SurveyResponse.csat,
            SurveyResponse.resolved,
        )  # fmt: skip
        .join(reply, reply.reply_to_id == Message.id)
        .outerjoin(Feedback, Feedback.message_id == reply.id)
        .outerjoin(SurveyResponse, SurveyResponse.conversation_id == Message.conversation_id)
        .where(
            Message.role == "customer",
            reply.role == "bot",
            Message.created_at > since,
            Message.created_at <= until,
        )  # fmt: skip
        .order_by(Message.created_at, Message.id)
    ).all()
    out: dict[int, FailedQuestion] = {}
    for mid, cid, text, at, decision, confidence, bot_reasons, rating, csat, resolved in rows:
        reasons = _reasons(decision, confidence, bot_reasons, rating, csat, resolved, low_confidence)
        if reasons and mid not in out:
            out[mid] = FailedQuestion(mid, cid, text, at, reasons)
    return list(out.values())


def field_vectors(index: KnowledgeIndex, field: str) -> tuple[np.ndarray, list[int]]:
    """The stored vectors of one field (question, variation, answer, text) and their chunk positions."""
    rows = [i for i, u in enumerate(index.units) if u.field == field]
    if not rows or not index.faiss_index.ntotal:
        return np.zeros((0, index.embedder.dim), dtype=np.float32), []
    every = index.faiss_index.reconstruct_n(0, index.faiss_index.ntotal)
    return np.asarray(every[rows], dtype=np.float32), [index.units[i].chunk_index for i in rows]


def paraphrase_distances(index: KnowledgeIndex) -> np.ndarray:
    """Cosine distances between each FAQ question and its own variations: how far paraphrases sit."""
    questions, q_chunks = field_vectors(index, "question")
    variations, v_chunks = field_vectors(index, "variation")
    by_chunk = {c: questions[i] for i, c in enumerate(q_chunks)}
    pairs = [1.0 - float(variations[i] @ by_chunk[c]) for i, c in enumerate(v_chunks) if c in by_chunk]
    return np.asarray(pairs, dtype=np.float64)


def calibrated_threshold(index: KnowledgeIndex) -> float | None:
    """The clustering distance threshold for this knowledge base, or None when it cannot tell."""
    distances = paraphrase_distances(index)
    if len(distances) < MIN_CALIBRATION_PAIRS:
        return None
    return float(np.quantile(distances, 0.75))


def cluster_vectors(vectors: np.ndarray, threshold: float | None) -> np.ndarray:
    """Cluster labels; -1 (HDBSCAN) means a question alone in its topic."""
    if len(vectors) < 2:
        return (
            np.zeros(len(vectors), dtype=np.int64) if threshold is not None else -np.ones(len(vectors), int)
        )
    if threshold is None:
        return np.asarray(HDBSCAN(min_cluster_size=2, copy=True).fit_predict(vectors))
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=threshold
    )
    return np.asarray(model.fit_predict(vectors))


def _groups(labels: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        key = int(label) if label >= 0 else -1 - i  # each HDBSCAN outlier is its own group
        groups.setdefault(key, []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def find_gaps(
    questions: Sequence[FailedQuestion], index: KnowledgeIndex, *, threshold: float | None = None,
    max_examples: int = 5,
) -> list[Gap]:  # fmt: skip
    """Cluster failed questions, largest cluster first, each with the FAQ entry nearest its medoid."""
    if not questions:
        return []
    threshold = threshold if threshold is not None else calibrated_threshold(index)
    vectors = index.embedder.embed_queries([q.text for q in questions])
    gaps = []
    for members in _groups(cluster_vectors(vectors, threshold)):
        sub = vectors[members]
        medoid = members[int(np.argmax((sub @ sub.T).sum(axis=1)))]
        hits = index.search(questions[medoid].text, 1, query_vector=vectors[medoid])
        reasons = Counter(r for i in members for r in questions[i].reasons)
        ordered = [medoid, *[i for i in members if i != medoid]]
        gaps.append(
            Gap(
                size=len(members),
                examples=tuple(dict.fromkeys(questions[i].text for i in ordered))[:max_examples],
                message_ids=tuple(questions[i].message_id for i in members),
                reasons=tuple(reasons.most_common()),
                nearest_faq_id=hits[0].chunk.source_id if hits else None,
                nearest_title=hits[0].chunk.display_title if hits else None,
                nearest_score=(hits[0].dense_score if hits else None),
            )
        )
    return gaps

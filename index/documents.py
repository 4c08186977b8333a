"""The values that flow through the index: source documents, chunks and search hits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

DocKind = Literal["faq", "manual"]
# Which text of a chunk a vector was computed from: the whole chunk; the FAQ question (for a manual
# piece, its heading path) or one of the FAQ entry's question variations; the answer (the body alone).
VectorField = Literal["text", "question", "variation", "answer"]


def content_hash(*parts: str) -> str:
    """A short, stable hash of some text, used to detect changes and key the embedding cache."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class FaqEntry:
    """One FAQ entry as a support team writes it."""

    id: str
    question: str
    answer: str
    variations: tuple[str, ...] = ()
    category: str | None = None
    url: str | None = None
    updated_at: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Section:
    """A run of manual text under one heading path."""

    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Manual:
    """A support manual, already split into sections by its structure (headings)."""

    id: str
    title: str
    sections: tuple[Section, ...]
    url: str | None = None
    updated_at: str | None = None
    category: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class SourceDoc:
    """A source document (one FAQ entry or one manual) with the hash that says whether it changed."""

    id: str
    kind: DocKind
    path: str
    content_hash: str
    payload: FaqEntry | Manual


@dataclass(frozen=True)
class Chunk:
    """The unit of retrieval: a whole FAQ entry or a piece of a manual section."""

    id: str
    source_id: str
    kind: DocKind
    title: str
    heading_path: tuple[str, ...]
    text: str
    url: str | None
    language: str
    content_hash: str
    updated_at: str | None = None
    category: str | None = None
    # For FAQ entries: the question and its variations, each embedded on its own (query-question
    # matching), while ``text`` (question + answer) serves query-answer matching.
    question: str | None = None
    answer: str | None = None
    variations: tuple[str, ...] = field(default=())

    @property
    def display_title(self) -> str:
        """The FAQ question, or the manual's heading path joined."""
        return self.question or " > ".join(self.heading_path) or self.title


@dataclass(frozen=True)
class SearchHit:
    """One result of a search, with what each retriever thought of it."""

    chunk: Chunk
    score: float
    rank: int
    dense_score: float | None = None
    dense_rank: int | None = None
    sparse_score: float | None = None
    sparse_rank: int | None = None
    # Best dense match per field: cosine to the question, to a variation, to the whole text.
    question_score: float | None = None
    text_score: float | None = None
    answer_score: float | None = None
    matched_field: VectorField | None = None


def distinct_sources(hits: Sequence[SearchHit]) -> list[SearchHit]:
    """The best hit of each source document, in rank order."""
    seen: set[str] = set()
    out = []
    for hit in hits:
        if hit.chunk.source_id not in seen:
            seen.add(hit.chunk.source_id)
            out.append(hit)
    return out

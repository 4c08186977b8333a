"""Hybrid search: dense (FAISS) + BM25, four rankings fused by weighted reciprocal-rank fusion.

Following Sakata et al. (SIGIR 2019), the dense side matches the query separately against an FAQ
entry's question and variations (query-question similarity), its answer alone (query-answer
relevance) and its whole text; a manual piece plays the same game with its heading path as the
"question" and its body as the "answer", so FAQ entries and manual pieces compete on equal terms.
BM25 runs over Japanese content words and English words. On LocalgovFAQ dev (``madoguchi eval
retrieval``), fusing the four rankings lifts Recall@10 from 0.66 (dense, whole text) and 0.62 (BM25)
to about 0.75.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import bm25s
import faiss
import numpy as np

from index.chunk import embed_text
from index.documents import Chunk, SearchHit, VectorField
from index.embed import Embedder
from index.textja import terms

# Above this many vectors an approximate HNSW index replaces the exact one (measured in
# bench/bench_search.py: exact search stays under the query-embedding time up to ~50k vectors).
HNSW_MIN_VECTORS = 50_000


@dataclass(frozen=True)
class FusionConfig:
    """Weights of the three rankings in reciprocal-rank fusion, and the RRF constant.

    Defaults chosen on LocalgovFAQ dev (``madoguchi eval retrieval``; see README "Quality").
    """

    text_weight: float = 1.0
    question_weight: float = 1.0
    answer_weight: float = 1.0
    sparse_weight: float = 1.0
    rrf_k: int = 60
    candidates: int = 200

    def describe(self) -> dict[str, float | int]:
        """For the manifest and MLflow parameters."""
        return {
            "text_weight": self.text_weight,
            "question_weight": self.question_weight,
            "answer_weight": self.answer_weight,
            "sparse_weight": self.sparse_weight,
            "rrf_k": self.rrf_k,
            "candidates": self.candidates,
        }


@dataclass(frozen=True)
class VectorUnit:
    """One embedded text: a chunk's whole text, or an FAQ question or variation."""

    chunk_index: int
    field: VectorField
    text: str


def vector_units(chunks: Sequence[Chunk]) -> list[VectorUnit]:
    """The texts to embed for a list of chunks: whole text, question(s) and answer."""
    units: list[VectorUnit] = []
    for i, c in enumerate(chunks):
        units.append(VectorUnit(i, "text", embed_text(c)))
        if c.kind == "faq":
            units.append(VectorUnit(i, "question", c.question or c.title))
            units.extend(VectorUnit(i, "variation", v) for v in c.variations)
            units.append(VectorUnit(i, "answer", c.answer or c.text))
        else:
            units.append(VectorUnit(i, "question", " > ".join(c.heading_path) or c.title))
            units.append(VectorUnit(i, "answer", c.text))
    return units


def is_query_like(field: VectorField) -> bool:
    """Questions and variations are embedded as queries (e5's symmetric mode), the rest as passages."""
    return field in ("question", "variation")


def embed_units(embedder: Embedder, units: Sequence[VectorUnit]) -> np.ndarray:
    """Vectors for units, each in its role (query-like or passage)."""
    out = np.zeros((len(units), embedder.dim), dtype=np.float32)
    q_idx = [i for i, u in enumerate(units) if is_query_like(u.field)]
    d_idx = [i for i, u in enumerate(units) if not is_query_like(u.field)]
    if d_idx:
        out[d_idx] = embedder.embed_documents([units[i].text for i in d_idx])
    if q_idx:
        out[q_idx] = embedder.embed_queries([units[i].text for i in q_idx])
    return out


def chunk_terms(chunk: Chunk) -> list[str]:
    """BM25 terms of a chunk: heading path, question, variations and text."""
    parts = [*chunk.heading_path, *chunk.variations, embed_text(chunk)]
    return terms("\n".join(parts))


def build_faiss(vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product search for small indexes, HNSW when the size calls for it."""
    dim = vectors.shape[1]
    if len(vectors) >= HNSW_MIN_VECTORS:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build_bm25(chunk_term_lists: Sequence[list[str]]) -> bm25s.BM25:
    """A BM25 index over pre-tokenized chunks (bm25s' own tokenizer is useless for Japanese)."""
    bm25 = bm25s.BM25()
    # An empty document list breaks bm25s; a placeholder token keeps the vocabulary non-empty.
    docs = [t if t else ["\x00"] for t in chunk_term_lists] or [["\x00"]]
    bm25.index(docs, show_progress=False)
    return bm25


@dataclass
class KnowledgeIndex:
    """Chunks with their dense vectors (FAISS) and BM25 index, searchable together."""

    chunks: list[Chunk]
    units: list[VectorUnit]
    faiss_index: faiss.Index
    bm25: bm25s.BM25
    chunk_terms: list[list[str]]
    embedder: Embedder
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self) -> None:
        self._unit_chunk = np.array([u.chunk_index for u in self.units], dtype=np.int64)
        # 0 = question or variation, 1 = whole text, 2 = answer (body)
        self._unit_slot = np.array(
            [0 if is_query_like(u.field) else 1 if u.field == "text" else 2 for u in self.units],
            dtype=np.int8,
        )
        self._by_id = {c.id: i for i, c in enumerate(self.chunks)}

    @classmethod
    def from_chunks(
        cls, chunks: Sequence[Chunk], embedder: Embedder, fusion: FusionConfig | None = None
    ) -> KnowledgeIndex:
        """Embed and index chunks in memory (evaluation, tests, and the first step of a build)."""
        units = vector_units(chunks)
        vectors = embed_units(embedder, units)
        term_lists = [chunk_terms(c) for c in chunks]
        return cls(
            chunks=list(chunks),
            units=units,
            faiss_index=build_faiss(vectors),
            bm25=build_bm25(term_lists),
            chunk_terms=term_lists,
            embedder=embedder,
            fusion=fusion or FusionConfig(),
        )

    def __len__(self) -> int:
        return len(self.chunks)

    def chunk(self, chunk_id: str) -> Chunk | None:
        """The chunk with this id, if present."""
        i = self._by_id.get(chunk_id)
        return None if i is None else self.chunks[i]

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        category: str | None = None,
        language: str | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[SearchHit]:
        """The top ``k`` chunks for a query, optionally restricted to a category and language.

        ``query_vector``: the query's embedding when the caller already has it (it is not computed again).
        """
        vectors = None if query_vector is None else np.atleast_2d(query_vector)
        return self.search_many([query], k, category=category, language=language, query_vectors=vectors)[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        category: str | None = None,
        language: str | None = None,
        query_vectors: np.ndarray | None = None,
    ) -> list[list[SearchHit]]:
        """Search several queries with one batched query embedding (or the given query vectors)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k!r}")
        if not self.chunks or not queries:
            return [[] for _ in queries]
        if query_vectors is not None and query_vectors.shape != (len(queries), self.embedder.dim):
            raise ValueError(
                f"query_vectors must have shape ({len(queries)}, {self.embedder.dim}), "
                f"got {query_vectors.shape}"
            )
        allowed = self._allowed(category, language)
        qvecs = self.embedder.embed_queries(list(queries)) if query_vectors is None else query_vectors
        dense = self._dense(np.asarray(qvecs, dtype=np.float32), allowed)
        return [self._fuse(dense[i], self._sparse(q, allowed), k) for i, q in enumerate(queries)]

    def _allowed(self, category: str | None, language: str | None) -> np.ndarray | None:
        if category is None and language is None:
            return None
        return np.array(
            [
                (category is None or c.category == category) and (language is None or c.language == language)
                for c in self.chunks
            ],
            dtype=bool,
        )

    def _dense(self, qvecs: np.ndarray, allowed: np.ndarray | None) -> list[list[_Ranking]]:
        """Per query, four rankings of chunks: by question/variation, text, answer, and best of them."""
        n = self.faiss_index.ntotal
        want = min(n, max(self.fusion.candidates * 6, 300))
        params = None
        if allowed is not None:
            unit_ids = np.flatnonzero(allowed[self._unit_chunk]).astype(np.int64)
            if len(unit_ids) == 0:
                return [[_Ranking.empty()] * 4 for _ in range(len(qvecs))]
            want = min(want, len(unit_ids))
            sel = faiss.IDSelectorBatch(unit_ids)
            params = (
                faiss.SearchParametersHNSW(sel=sel, efSearch=max(128, want))
                if isinstance(self.faiss_index, faiss.IndexHNSWFlat)
                else faiss.SearchParameters(sel=sel)
            )
        scores, ids = self.faiss_index.search(np.ascontiguousarray(qvecs), want, params=params)
        out: list[list[_Ranking]] = []
        for row_s, row_i in zip(scores, ids, strict=True):
            keep = row_i >= 0
            row_s, row_i = row_s[keep], row_i[keep]  # FAISS returns them best first
            chunk_of, slot_of = self._unit_chunk[row_i], self._unit_slot[row_i]
            per_slot = [
                _Ranking.first_occurrences(chunk_of[slot_of == s], row_s[slot_of == s]) for s in range(3)
            ]
            out.append([*per_slot, _Ranking.first_occurrences(chunk_of, row_s)])
        return out

    def _sparse(self, query: str, allowed: np.ndarray | None) -> _Ranking:
        qterms = [t for t in terms(query) if t in self.bm25.vocab_dict]
        if not qterms:
            return _Ranking.empty()
        scores = self.bm25.get_scores(qterms)[: len(self.chunks)]
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        top = min(self.fusion.candidates, len(scores))
        idx = np.argpartition(-scores, top - 1)[:top]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        idx = idx[scores[idx] > 0]
        return _Ranking(idx.astype(np.int64), scores[idx].astype(np.float32))

    def _fuse(self, dense: list[_Ranking], sparse: _Ranking, k: int) -> list[SearchHit]:
        f = self.fusion
        lists = [
            (dense[0], f.question_weight),
            (dense[1], f.text_weight),
            (dense[2], f.answer_weight),
            (sparse, f.sparse_weight),
        ]
        ids_parts, contrib_parts = [], []
        for ranking, weight in lists:
            if weight == 0 or not len(ranking.ids):
                continue
            top = ranking.ids[: f.candidates]
            ids_parts.append(top)
            contrib_parts.append(weight / (f.rrf_k + np.arange(1, len(top) + 1)))
        if not ids_parts:
            return []
        uniq, inverse = np.unique(np.concatenate(ids_parts), return_inverse=True)
        fused = np.bincount(inverse, weights=np.concatenate(contrib_parts))
        order = np.argsort(-fused, kind="stable")[:k]
        return [
            self._hit(int(uniq[j]), rank, float(fused[j]), dense, sparse)
            for rank, j in enumerate(order, start=1)
        ]

    def _hit(self, i: int, rank: int, score: float, dense: list[_Ranking], sparse: _Ranking) -> SearchHit:
        q, t, a, best = (r.lookup(i) for r in dense)
        s = sparse.lookup(i)
        fields: list[tuple[float, VectorField]] = [
            (v[0], name) for v, name in ((q, "question"), (t, "text"), (a, "answer")) if v is not None
        ]
        return SearchHit(
            chunk=self.chunks[i],
            score=score,
            rank=rank,
            dense_score=best[0] if best else None,
            dense_rank=best[1] if best else None,
            sparse_score=s[0] if s else None,
            sparse_rank=s[1] if s else None,
            question_score=q[0] if q else None,
            text_score=t[0] if t else None,
            answer_score=a[0] if a else None,
            matched_field=max(fields)[1] if fields else None,
        )


@dataclass(frozen=True)
class _Ranking:
    """Chunk indexes best first, with their scores."""

    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> _Ranking:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))

    @classmethod
    def first_occurrences(cls, chunk_ids: np.ndarray, scores: np.ndarray) -> _Ranking:
        """Keep each chunk's first (best) appearance in a best-first list of units."""
        _, first = np.unique(chunk_ids, return_index=True)
        first.sort()
        return cls(chunk_ids[first], scores[first])

    def lookup(self, chunk_index: int) -> tuple[float, int] | None:
        """(score, 1-based rank) of a chunk, or None when it is not in the ranking."""
        where = np.flatnonzero(self.ids == chunk_index)
        return (float(self.scores[where[0]]), int(where[0]) + 1) if len(where) else None

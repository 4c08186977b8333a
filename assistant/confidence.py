"""Confidence: the calibrated probability that the bot's answer (the top hit) is right.

Retrieval features (fused, dense and BM25 scores and margins, dense/BM25 agreement, a question or
variation match) plus nearest-neighbour evidence over the entries' question and variation vectors
(how many of the nearest variations vote for the top entry, the mean of its best few, its centroid)
feed a logistic regression on standardized features, optionally followed by isotonic calibration.
The fitted model is a versioned JSON artifact (no pickle): coefficients, scaler, isotonic points,
the answer threshold chosen for a target precision on cross-validated predictions, and its metrics.

Errors: ``ConfidenceArtifactError`` (an artifact that cannot be read or has another format version);
bad arguments raise ``ValueError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold

from index.documents import SearchHit
from index.search import KnowledgeIndex

ARTIFACT_FORMAT = "madoguchi-confidence"
ARTIFACT_VERSION = 1
DEFAULT_ARTIFACT = Path(__file__).parent / "data" / "confidence_default.json"
KNN_K = 10  # neighbours that vote
TOP_M = 3  # an entry's best variations averaged
# Entries need this many question/variation vectors before their neighbours outvote the fused ranking.
RERANK_MIN_VECTORS = 8
# A question/variation this close to the query is the customer's own wording of that entry: it wins
# over the fused ranking (same-text cosine is 1.0; paraphrases of the demo entries stay below 0.97).
EXACT_MATCH_COSINE = 0.97
# Floor of an entry's member spread (cosine), so entries with one or two variations get a sane z-score.
MIN_SPREAD = 0.02


class ConfidenceArtifactError(ValueError):
    """A confidence artifact is missing fields, malformed, or from another format version."""


# ---------------------------------------------------------------------------------------------------
# Nearest-neighbour evidence over question and variation vectors
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryEvidence:
    """What the nearest question/variation vectors say about the top hit's entry."""

    votes: float = 0.0  # share of the k nearest question/variation vectors that are the entry's
    weighted_votes: float = 0.0  # the same, weighted by cosine
    top_mean: float = 0.0  # mean cosine of the entry's best ``TOP_M`` questions/variations
    centroid: float = 0.0  # cosine to the entry's centroid (mean of its question/variation vectors)
    centroid_margin: float = 0.0  # that minus the best other entry's centroid cosine
    vote_winner_agrees: float = 0.0  # 1 when the weighted-vote winner is the top hit's entry
    centroid_winner_agrees: float = 0.0  # 1 when the nearest centroid is the top hit's entry
    has_questions: float = 0.0  # 1 when the entry has question/variation vectors at all
    centroid_z: float = 0.0  # centroid cosine in standard deviations of the entry's own members' cosines
    entry_score: float = 0.0  # ``EntryVectors.entry_score`` of the entry
    entry_margin: float = 0.0  # that minus the best entry score of the other FAQ hits (1 if none)


@dataclass(frozen=True)
class Assessment:
    """A query's hits, answer first, and the confidence features of that answer (None: no hits)."""

    hits: tuple[SearchHit, ...]
    features: ConfidenceFeatures | None


class EntryVectors:
    """The question and variation vectors of an index, grouped by chunk, with their centroids.

    Built once per loaded index (vectors are read back from its FAISS store, nothing is re-embedded).
    """

    def __init__(self, vectors: np.ndarray, owners: np.ndarray, chunk_ids: Sequence[str]) -> None:
        if vectors.ndim != 2 or len(vectors) != len(owners):
            raise ValueError(f"vectors {vectors.shape} and owners {owners.shape} do not match")
        n_chunks = len(chunk_ids)
        self.position = {cid: i for i, cid in enumerate(chunk_ids)}
        order = np.argsort(owners, kind="stable")
        self.owners = owners.astype(np.int64)
        self._sorted = np.ascontiguousarray(vectors[order], dtype=np.float32)
        counts = np.bincount(self.owners, minlength=n_chunks)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        sums = np.zeros((n_chunks, vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, self.owners, vectors)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        self.centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
        self.has_questions = counts > 0
        # How close an entry's own questions/variations sit to its centroid: a query is judged against
        # its entry's spread (a tight entry needs a closer query than a broad one).
        sorted_owners = self.owners[order]
        member_cos = np.einsum("ij,ij->i", self._sorted, self.centroids[sorted_owners])
        safe = np.maximum(counts, 1)
        self.member_mean = np.bincount(sorted_owners, weights=member_cos, minlength=n_chunks) / safe
        sq = np.bincount(sorted_owners, weights=member_cos**2, minlength=n_chunks) / safe
        self.member_std = np.sqrt(np.maximum(sq - self.member_mean**2, 0.0))
        self._knn = faiss.IndexFlatIP(vectors.shape[1])
        self._knn.add(np.ascontiguousarray(vectors, dtype=np.float32))

    @classmethod
    def from_index(cls, index: KnowledgeIndex) -> EntryVectors:
        """Read the FAQ question/variation vectors of ``index`` back from its FAISS store."""
        ids = np.array(
            [i for i, u in enumerate(index.units)
             if u.field in ("question", "variation") and index.chunks[u.chunk_index].kind == "faq"],
            dtype=np.int64,
        )
        dim = index.faiss_index.d
        vectors = np.zeros((len(ids), dim), dtype=np.float32)
        for row, uid in enumerate(ids):
            vectors[row] = index.faiss_index.reconstruct(int(uid))
        owners = np.array([index.units[i].chunk_index for i in ids], dtype=np.int64)
        return cls(vectors.reshape(len(ids), dim), owners, [c.id for c in index.chunks])

    def assess(
        self, queries: Sequence[str], hits: Sequence[Sequence[SearchHit]], query_vectors: np.ndarray
    ) -> list[Assessment]:
        """For each query: its hits with the answer first (see ``rerank``) and their features."""
        q = np.asarray(query_vectors, dtype=np.float32).reshape(len(queries), -1)
        ordered = [self.rerank(h, q[i]) for i, h in enumerate(hits)]
        tops = [self.position.get(h[0].chunk.id) if h else None for h in ordered]
        evidence = self.evidence(q, tops, ordered)
        return [
            Assessment(tuple(h), extract_features(text, h, ev) if h else None)
            for text, h, ev in zip(queries, ordered, evidence, strict=True)
        ]

    def entry_score(self, query_vector: np.ndarray, chunk: int) -> float:
        """Mean cosine of the entry's best few questions/variations plus cosine to its centroid.

        Steadier than the single best variation (measured on CLINC150 test, nearest-neighbour intent
        accuracy 0.889 -> 0.932 with the packaged model).
        """
        own = self._sorted[self._starts[chunk] : self._starts[chunk + 1]] @ query_vector
        return float(np.sort(own)[-TOP_M:].mean() + self.centroids[chunk] @ query_vector)

    def _faq_positions(self, hits: Sequence[SearchHit]) -> list[tuple[int, int]]:
        """(hit index, chunk position) of the hits that have question/variation vectors."""
        out = []
        for i, h in enumerate(hits):
            pos = self.position.get(h.chunk.id)
            if pos is not None and self.has_questions[pos]:
                out.append((i, pos))
        return out

    def rerank(self, hits: Sequence[SearchHit], query_vector: np.ndarray) -> list[SearchHit]:
        """Hits with the answer first.

        1. A (near-)verbatim FAQ question or variation wins: rank fusion can bury it under entries
           that its text and BM25 rankings prefer (on the demo knowledge base, 17% of the variations
           asked verbatim were not the fused top hit).
        2. When the top hit is an FAQ entry with enough variations to vote, the FAQ hit of best entry
           score goes first. Entries with few variations keep the fused order: with two or three,
           their mean and centroid are noisier than fusion (demo leave-one-variation-out top-1 fell
           from 78 to 69 of 112 when every entry was re-ranked).
        A manual passage on top otherwise stays on top.
        """
        faq = self._faq_positions(hits)
        exact = [i for i, _ in faq if (hits[i].question_score or 0.0) >= EXACT_MATCH_COSINE]
        if exact:
            best = max(exact, key=lambda i: hits[i].question_score or 0.0)
        else:
            voters = [(i, p) for i, p in faq if self._size(p) >= RERANK_MIN_VECTORS]
            if not voters or voters[0][0] != 0:
                return list(hits)
            best = max(voters, key=lambda ip: self.entry_score(query_vector, ip[1]))[0]
        return [hits[best], *(h for i, h in enumerate(hits) if i != best)]

    def _size(self, chunk: int) -> int:
        return int(self._starts[chunk + 1] - self._starts[chunk])

    def evidence(
        self, query_vectors: np.ndarray, top_chunks: Sequence[int | None], hits: Sequence[Sequence[SearchHit]]
    ) -> list[EntryEvidence]:
        """Evidence for each query's top chunk (``None``: no hit, empty evidence)."""
        q = np.ascontiguousarray(query_vectors, dtype=np.float32).reshape(len(top_chunks), -1)
        out = [EntryEvidence() for _ in range(len(q))]
        if self._knn.ntotal == 0 or len(q) == 0:
            return out
        k = min(KNN_K, self._knn.ntotal)
        sims, ids = self._knn.search(q, k)
        centroid_sims = q @ self.centroids.T
        centroid_sims[:, ~self.has_questions] = -np.inf
        for i, chunk in enumerate(top_chunks):
            if chunk is not None and self.has_questions[chunk]:
                others = [self.entry_score(q[i], p) for _, p in self._faq_positions(hits[i]) if p != chunk]
                ev = self._one(q[i], chunk, sims[i], self.owners[ids[i]], centroid_sims[i])
                score = self.entry_score(q[i], chunk)
                out[i] = replace(ev, entry_score=score, entry_margin=score - max(others, default=score - 1.0))
        return out

    def _one(
        self, q: np.ndarray, chunk: int, sims: np.ndarray, owners: np.ndarray, centroid_sims: np.ndarray
    ) -> EntryEvidence:
        mine = owners == chunk
        weights = np.clip(sims, 0.0, None)
        weighted = np.bincount(owners, weights=weights)
        own = self._sorted[self._starts[chunk] : self._starts[chunk + 1]] @ q
        best_m = np.sort(own)[-TOP_M:]
        centroid = float(centroid_sims[chunk])
        others = np.delete(centroid_sims, chunk)
        best_other = float(others.max()) if len(others) and np.isfinite(others.max()) else centroid
        spread = max(float(self.member_std[chunk]), MIN_SPREAD)
        return EntryEvidence(
            centroid_z=(centroid - float(self.member_mean[chunk])) / spread,
            votes=float(mine.mean()),
            weighted_votes=float(weights[mine].sum() / max(weights.sum(), 1e-12)),
            top_mean=float(best_m.mean()),
            centroid=centroid,
            centroid_margin=centroid - best_other,
            vote_winner_agrees=float(int(np.argmax(weighted)) == chunk),
            centroid_winner_agrees=float(int(np.argmax(centroid_sims)) == chunk),
            has_questions=1.0,
        )


# ---------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceFeatures:
    """The numbers the confidence model reads, for one query and its hits (top hit = the answer)."""

    top_fused: float
    fused_margin: float  # (top1 - top2) / top1 of the fused score
    top_dense: float  # best dense cosine of the top hit (question, variation or text)
    dense_margin: float  # that minus the best dense cosine of another source
    top_question: float  # cosine to the top hit's best question/variation (0 if it has none)
    question_margin: float  # that minus the best question cosine of another source
    top_text: float  # cosine to the top hit's whole text
    top_answer: float  # cosine to the top hit's answer (FAQ) or body (manual) alone
    sparse_top: float  # log(1 + BM25 score of the top hit)
    sparse_share: float  # the top hit's BM25 score over the best BM25 score among the hits
    dense_sparse_agree: float  # 1 when the dense and BM25 rankings have the same top source
    dense_top_sparse_rr: float  # reciprocal BM25 rank of the dense top hit (0 if absent)
    question_matched: float  # 1 when the top hit matched by its question or a variation
    verbatim_match: float  # 1 when the top hit's question or a variation is the query's own wording
    query_chars: float  # log(1 + characters of the query)
    knn_votes: float
    knn_weighted_votes: float
    knn_top_mean: float
    centroid: float
    centroid_margin: float
    knn_winner_agrees: float
    centroid_winner_agrees: float
    has_questions: float
    centroid_z: float
    entry_score: float
    entry_margin: float

    @classmethod
    def signs(cls) -> tuple[int, ...]:
        """The sign each coefficient is held to: +1 for evidence that the answer is right, 0 free."""
        return tuple(0 if n in _FREE_FEATURES else 1 for n in cls.names())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Feature names, in the order of ``as_array``."""
        return tuple(f.name for f in fields(cls))

    def as_array(self) -> np.ndarray:
        """The features as a float64 vector."""
        return np.array(astuple(self), dtype=np.float64)


# Features whose effect may go either way; every other feature is evidence for the answer, and its
# coefficient is held non-negative so that the model cannot extrapolate against it (without the
# constraint, collinear scores got opposite signs and an exact FAQ question match scored low).
_FREE_FEATURES = frozenset({"query_chars", "question_matched", "has_questions"})


def _best_other(hits: Sequence[SearchHit], value: str, source: str) -> float:
    scores = [getattr(h, value) for h in hits[1:] if h.chunk.source_id != source]
    scores = [v for v in scores if v is not None]
    return max(scores, default=0.0)


def _sparse_features(hits: Sequence[SearchHit]) -> tuple[float, float, float, float]:
    top = hits[0]
    sparse = [h.sparse_score or 0.0 for h in hits]
    best_sparse = max(sparse)
    dense_top = min(hits, key=lambda h: h.dense_rank or 10**9)
    sparse_top = min(hits, key=lambda h: h.sparse_rank or 10**9)
    agree = float(
        dense_top.dense_rank is not None and sparse_top.sparse_rank is not None
        and dense_top.chunk.source_id == sparse_top.chunk.source_id
    )
    rr = 1.0 / dense_top.sparse_rank if dense_top.sparse_rank else 0.0
    share = (top.sparse_score or 0.0) / best_sparse if best_sparse > 0 else 0.0
    return math.log1p(top.sparse_score or 0.0), share, agree, rr


def extract_features(
    query: str, hits: Sequence[SearchHit], evidence: EntryEvidence | None = None
) -> ConfidenceFeatures:
    """Features of a search result; ``hits`` ordered best first (the top hit is what would be answered)."""
    if not hits:
        raise ValueError("extract_features needs at least one hit; no hits means nothing to answer")
    top, source = hits[0], hits[0].chunk.source_id
    ev = evidence or EntryEvidence()
    second_fused = hits[1].score if len(hits) > 1 else 0.0
    top_dense = top.dense_score or 0.0
    top_question = top.question_score or 0.0
    sparse_top, sparse_share, agree, rr = _sparse_features(hits)
    return ConfidenceFeatures(
        top_fused=top.score,
        fused_margin=(top.score - second_fused) / top.score if top.score > 0 else 0.0,
        top_dense=top_dense,
        dense_margin=top_dense - _best_other(hits, "dense_score", source),
        top_question=top_question,
        question_margin=top_question - _best_other(hits, "question_score", source) if top_question else 0.0,
        top_text=top.text_score or 0.0,
        top_answer=top.answer_score or 0.0,
        sparse_top=sparse_top,
        sparse_share=sparse_share,
        dense_sparse_agree=agree,
        dense_top_sparse_rr=rr,
        question_matched=float(top.matched_field in ("question", "variation")),
        verbatim_match=float(top.chunk.kind == "faq" and top_question >= EXACT_MATCH_COSINE),
        query_chars=math.log1p(len(query)),
        knn_votes=ev.votes,
        knn_weighted_votes=ev.weighted_votes,
        knn_top_mean=ev.top_mean,
        centroid=ev.centroid,
        centroid_margin=ev.centroid_margin,
        knn_winner_agrees=ev.vote_winner_agrees,
        centroid_winner_agrees=ev.centroid_winner_agrees,
        has_questions=ev.has_questions,
        centroid_z=ev.centroid_z,
        entry_score=ev.entry_score,
        entry_margin=ev.entry_margin,
    )


# ---------------------------------------------------------------------------------------------------
# The model: standardized logistic regression, optional isotonic calibration, a threshold
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceModel:
    """A fitted confidence model and its answer threshold, as stored in the JSON artifact."""

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float  # answer when the probability is at least this
    target_precision: float
    isotonic_x: tuple[float, ...] = ()  # empty: no isotonic step
    isotonic_y: tuple[float, ...] = ()
    fitted_on: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    version: int = ARTIFACT_VERSION

    def __post_init__(self) -> None:
        unknown = set(self.feature_names) - set(ConfidenceFeatures.names())
        if unknown:
            raise ConfidenceArtifactError(f"unknown confidence features {sorted(unknown)}; refit the model")
        n = len(self.feature_names)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ConfidenceArtifactError(f"{n} features but {len(self.coef)} coefficients")
        if len(self.isotonic_x) != len(self.isotonic_y):
            raise ConfidenceArtifactError("isotonic x and y differ in length")

    def matrix(self, features: Sequence[ConfidenceFeatures]) -> np.ndarray:
        """The model's columns of a list of features."""
        return _matrix(features, self.feature_names)

    def raw_probabilities(self, x: np.ndarray) -> np.ndarray:
        """The logistic regression's probabilities for rows of ``x`` (the model's columns)."""
        return _raw(x, np.asarray(self.mean), np.asarray(self.scale), np.asarray(self.coef), self.intercept)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities that the answers are right."""
        p = self.raw_probabilities(x)
        if self.isotonic_x:
            p = np.interp(p, self.isotonic_x, self.isotonic_y)
        return np.asarray(np.clip(p, 0.0, 1.0), dtype=np.float64)

    def probability(self, features: ConfidenceFeatures) -> float:
        """The calibrated probability that the answer these features describe is right."""
        return float(self.probabilities(self.matrix([features]))[0])

    def to_json(self) -> dict[str, Any]:
        """The artifact as JSON-ready data."""
        return {
            "format": ARTIFACT_FORMAT,
            "version": self.version,
            "feature_names": list(self.feature_names),
            "scaler": {"mean": list(self.mean), "scale": list(self.scale)},
            "logistic": {"coef": list(self.coef), "intercept": self.intercept},
            "isotonic": {"x": list(self.isotonic_x), "y": list(self.isotonic_y)} if self.isotonic_x else None,
            "threshold": self.threshold,
            "target_precision": self.target_precision,
            "fitted_on": self.fitted_on,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfidenceModel:
        """Read an artifact; ``ConfidenceArtifactError`` if it is not one of this version."""
        if data.get("format") != ARTIFACT_FORMAT or data.get("version") != ARTIFACT_VERSION:
            raise ConfidenceArtifactError(
                f"not a {ARTIFACT_FORMAT} v{ARTIFACT_VERSION} artifact: format {data.get('format')!r}, "
                f"version {data.get('version')!r}"
            )
        try:
            iso = data.get("isotonic") or {"x": [], "y": []}
            return cls(
                feature_names=tuple(data["feature_names"]),
                mean=_floats(data["scaler"]["mean"]), scale=_floats(data["scaler"]["scale"]),
                coef=_floats(data["logistic"]["coef"]), intercept=float(data["logistic"]["intercept"]),
                threshold=float(data["threshold"]), target_precision=float(data["target_precision"]),
                isotonic_x=_floats(iso["x"]), isotonic_y=_floats(iso["y"]),
                fitted_on=str(data.get("fitted_on", "")),
                metrics={k: float(v) for k, v in data["metrics"].items()},
            )
        except (KeyError, TypeError) as exc:
            raise ConfidenceArtifactError(f"confidence artifact has a missing or bad field: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write the artifact as JSON (UTF-8, indented, stable key order)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_ARTIFACT) -> ConfidenceModel:
        """Read an artifact file (the shipped default when no path is given)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfidenceArtifactError(f"cannot read confidence artifact {path}: {exc}") from exc
        return cls.from_json(data)


def _floats(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _matrix(features: Sequence[ConfidenceFeatures], names: Sequence[str]) -> np.ndarray:
    return np.array([[getattr(f, n) for n in names] for f in features], dtype=np.float64)


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float = 0.95) -> float:
    """The lowest threshold t whose answers (probability >= t) reach ``target_precision``.

    Use out-of-fold probabilities. When no threshold reaches the target, 1.0: answer only certainties.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision!r}")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=bool)
    if probs.shape != labels.shape or probs.ndim != 1:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must be equal 1-d shapes")
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order]
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    last_of_tie = np.r_[p[1:] != p[:-1], True]  # a threshold takes every tied probability
    ok = np.flatnonzero(last_of_tie & (precision >= target_precision))
    return float(p[ok[-1]]) if len(ok) else 1.0


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float, signs: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """L2-regularized logistic regression on standardized features with sign-constrained coefficients.

    The objective is scikit-learn's (``C * sum(log loss) + ||w||^2 / 2``), minimized by L-BFGS-B.
    """
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature contributes nothing
    z = (x - mean) / scale
    target = y.astype(np.float64)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        t = z @ w + b
        residual = expit(t) - target
        value = c * float(np.sum(np.logaddexp(0.0, t) - target * t)) + 0.5 * float(w @ w)
        return value, np.r_[c * (z.T @ residual) + w, c * residual.sum()]

    bounds = [(0.0, None) if s > 0 else (None, 0.0) if s < 0 else (None, None) for s in signs]
    result = minimize(objective, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                      bounds=[*bounds, (None, None)])
    return mean, scale, result.x[:-1], float(result.x[-1])


def _raw(
    x: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float
) -> np.ndarray:
    return np.asarray(expit(((x - mean) / scale) @ coef + intercept), dtype=np.float64)


def stratified_folds(y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """A fold id per row, stratified by label."""
    fold_ids = np.zeros(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold_ids[held] = f
    return fold_ids


def out_of_fold_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    fold_ids: np.ndarray | None = None,
    *,
    signs: Sequence[int] | None = None,
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
) -> np.ndarray:
    """Logistic-regression probabilities for each row from a model that never saw that row."""
    y = np.asarray(y, dtype=bool)
    if fold_ids is None:
        fold_ids = stratified_folds(y, folds, seed)
    out = np.zeros(len(y))
    for f in np.unique(fold_ids):
        held = fold_ids == f
        if y[~held].all() or not y[~held].any():
            raise ValueError(f"fold {f}: the training part needs both right and wrong answers")
        out[held] = _raw(x[held], *_fit_logistic(x[~held], y[~held], c, signs or [0] * x.shape[1]))
    return out


def fit_confidence_model(
    features: Sequence[ConfidenceFeatures] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    *,
    feature_names: Sequence[str] | None = None,
    fold_ids: np.ndarray | None = None,
    folds: int = 5,
    isotonic: bool = True,
    target_precision: float = 0.95,
    fitted_on: str = "",
    seed: int = 0,
) -> ConfidenceModel:
    """Fit on labelled answers; calibrate and choose the threshold on out-of-fold predictions.

    ``features`` is a list of ``ConfidenceFeatures`` or a matrix whose columns are ``feature_names``
    (default: all features). ``fold_ids`` fixes the cross-validation folds (e.g. grouped by entry).
    """
    names = tuple(feature_names or ConfidenceFeatures.names())
    x = features if isinstance(features, np.ndarray) else _matrix(features, names)
    y = np.asarray(correct, dtype=bool)
    if x.shape != (len(y), len(names)):
        raise ValueError(f"features {x.shape} do not match {len(y)} labels and {len(names)} feature names")
    all_signs = dict(zip(ConfidenceFeatures.names(), ConfidenceFeatures.signs(), strict=True))
    signs = [all_signs[n] for n in names]
    fold_ids = stratified_folds(y, folds, seed) if fold_ids is None else np.asarray(fold_ids)
    oof = out_of_fold_probabilities(x, y, fold_ids, signs=signs)
    iso_x: tuple[float, ...] = ()
    iso_y: tuple[float, ...] = ()
    if isotonic:
        iso_x, iso_y = _isotonic_points(oof, y)
        oof = _cross_fitted_isotonic(oof, y, fold_ids)
    threshold = choose_threshold(oof, y, target_precision)
    mean, scale, coef, intercept = _fit_logistic(x, y, 1.0, signs)
    return ConfidenceModel(
        feature_names=names, mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
        coef=tuple(map(float, coef)), intercept=intercept, threshold=threshold,
        target_precision=target_precision, isotonic_x=iso_x, isotonic_y=iso_y, fitted_on=fitted_on,
        metrics=threshold_metrics(oof, y, threshold),
    )


def _isotonic_points(p: np.ndarray, y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_))


def _cross_fitted_isotonic(p: np.ndarray, y: np.ndarray, fold_ids: np.ndarray) -> np.ndarray:
    """Each fold calibrated by an isotonic map fitted on the other folds.

    Honest calibrated scores for choosing the threshold and reporting calibration: fitting and
    scoring on the same rows would make the calibration error zero by construction.
    """
    out = np.zeros(len(p))
    for f in np.unique(fold_ids):
        held = fold_ids == f
        xs, ys = _isotonic_points(p[~held], y[~held])
        out[held] = np.interp(p[held], xs, ys)
    return out


def threshold_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Out-of-fold quality of a confidence model: AUROC, Brier score, ECE, precision and coverage."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    y = np.asarray(labels, dtype=bool)
    answered = probs >= threshold
    both = 0 < y.sum() < len(y)
    return {
        "examples": float(len(y)),
        "right_share": float(y.mean()) if len(y) else 0.0,
        "auroc": float(roc_auc_score(y, probs)) if both else float("nan"),
        "brier": float(brier_score_loss(y, probs)) if len(y) else float("nan"),
        "ece": expected_calibration_error(probs, y),
        "answered_share": float(answered.mean()) if len(y) else 0.0,
        "answer_precision": float(y[answered].mean()) if answered.any() else float("nan"),
        "right_answered_share": float(answered[y].mean()) if y.any() else float("nan"),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(y[in_bin].mean() - probs[in_bin].mean())
    return float(total / len(probs))

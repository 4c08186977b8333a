"""Retrieval metrics over ranked ids and graded relevance judgements (qrels)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _relevant(grades: Mapping[str, int], min_grade: int) -> set[str]:
    return {d for d, g in grades.items() if g >= min_grade}


def recall_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int, min_grade: int = 1) -> float:
    """|relevant in the top k| / |relevant|."""
    rel = _relevant(grades, min_grade)
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


def hit_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int, min_grade: int = 1) -> float:
    """1 when any relevant document is in the top k."""
    rel = _relevant(grades, min_grade)
    return 1.0 if rel.intersection(ranked[:k]) else 0.0


def mrr_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int, min_grade: int = 1) -> float:
    """Reciprocal rank of the first relevant document in the top k (0 when none)."""
    rel = _relevant(grades, min_grade)
    for rank, doc in enumerate(ranked[:k], start=1):
        if doc in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    """nDCG with the grade as gain (linear gain, log2 discount)."""
    dcg = sum(grades.get(d, 0) / math.log2(r + 1) for r, d in enumerate(ranked[:k], start=1))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def retrieval_report(
    runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int, min_grade: int = 1
) -> dict[str, float]:
    """Mean Recall@k, nDCG@k, MRR@k and Hit@k over the queries that have judgements."""
    qids = [q for q in qrels if _relevant(qrels[q], min_grade)]
    if not qids:
        raise ValueError("no query has a relevant document in the qrels")
    n = len(qids)
    return {
        f"recall@{k}": sum(recall_at_k(runs.get(q, []), qrels[q], k, min_grade) for q in qids) / n,
        f"ndcg@{k}": sum(ndcg_at_k(runs.get(q, []), qrels[q], k) for q in qids) / n,
        f"mrr@{k}": sum(mrr_at_k(runs.get(q, []), qrels[q], k, min_grade) for q in qids) / n,
        f"hit@{k}": sum(hit_at_k(runs.get(q, []), qrels[q], k, min_grade) for q in qids) / n,
        "queries": float(n),
    }

"""Measure learning from resolved chats: before/after evaluation of the review queue's changes, and the
LocalgovFAQ k-fold experiment.

The product loop (``learn_and_evaluate``): the questions reviewers linked or drafted are searched on the
live index before the change and again after ``assistant.voc.review.apply_changes`` updated it; a
regression set (every FAQ entry's own question must still find its entry) guards the rest of the
knowledge base. Both are logged to MLflow through ``eval.track``.

The experiment (``kfold_learning``): LocalgovFAQ's dev queries are split into ``folds`` parts. For each
fold, the other folds' queries play the past resolved chats: each becomes a question variation of the
entries graded 2 for it ("contains the correct answer": what an operator would have linked; grade-1
"related" entries are not linked). Recall@10 is then measured on the held-out fold, with grade >= 1
counting as relevant (the data set's protocol), against the same fold on the index without learning.

Errors: ``LearningDataError`` for unusable inputs (too few queries for the folds).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from assistant.voc.finetune import FinetuneConfig, TrainingPair, finetune_model
from assistant.voc.review import ReviewRecord, apply_changes
from eval.metrics.retrieval import retrieval_report
from eval.retrieval import RetrievalData, corpus_chunks
from eval.track import RunRecord, TrackingConfig, log_run
from index.build import UpdateReport
from index.chunk import embed_text, faq_chunk
from index.documents import Chunk, FaqEntry
from index.embed import Embedder
from index.search import KnowledgeIndex
from index.store import load_index

LINK_GRADE = 2


class LearningDataError(ValueError):
    """The inputs cannot support the evaluation asked for."""


def _runs(index: KnowledgeIndex, queries: Mapping[str, str], k: int) -> dict[str, list[str]]:
    qids = list(queries)
    hits = index.search_many([queries[q] for q in qids], k) if qids else []
    # Several chunks of one source (manual pieces) count once, at their best rank.
    return {q: list(dict.fromkeys(h.chunk.source_id for h in row)) for q, row in zip(qids, hits, strict=True)}


def evaluate_questions(
    index: KnowledgeIndex, questions: Mapping[str, tuple[str, str]], k: int
) -> dict[str, float]:
    """Recall@k and friends of ``{id: (question, faq_id)}`` on ``index``."""
    runs = _runs(index, {qid: q for qid, (q, _) in questions.items()}, k)
    return retrieval_report(runs, {qid: {faq: 1} for qid, (_, faq) in questions.items()}, k)


def self_retrieval_set(index: KnowledgeIndex) -> dict[str, tuple[str, str]]:
    """Every FAQ entry's own question, which must retrieve it (the regression guard)."""
    return {
        f"self:{c.source_id}": (c.question or c.title, c.source_id) for c in index.chunks if c.kind == "faq"
    }


@dataclass(frozen=True)
class LearningResult:
    """What a learning run changed and measured."""

    items: int
    update: UpdateReport | None
    learned_before: dict[str, float]
    learned_after: dict[str, float]
    regression_before: dict[str, float]
    regression_after: dict[str, float]
    run_id: str | None


def learn_and_evaluate(
    kb_dir: Path, index_dir: Path, embedder: Embedder, items: Sequence[ReviewRecord], now: datetime, *,
    k: int = 10, tracking: TrackingConfig | None = None,
) -> LearningResult:  # fmt: skip
    """Evaluate, apply the reviewed items to the knowledge base and index, evaluate again, log both."""
    before = load_index(index_dir, embedder)
    learned = {f"item:{i.id}": (i.question, i.faq_id or f"learned-{i.id}") for i in items}
    regression = self_retrieval_set(before)
    learned_before = evaluate_questions(before, learned, k) if learned else {}
    regression_before = evaluate_questions(before, regression, k)
    update = apply_changes(kb_dir, index_dir, embedder, items, now)
    after = load_index(index_dir, embedder)
    learned_after = evaluate_questions(after, learned, k) if learned else {}
    regression_after = evaluate_questions(after, self_retrieval_set(after), k)
    run_id = None
    if tracking is not None:
        metrics = {f"learned/{m}/before": v for m, v in learned_before.items()}
        metrics |= {f"learned/{m}/after": v for m, v in learned_after.items()}
        metrics |= {f"regression/{m}/before": v for m, v in regression_before.items()}
        metrics |= {f"regression/{m}/after": v for m, v in regression_after.items()}
        table = [
            {"item": i.id, "status": i.status, "question": i.question, "faq_id": i.faq_id} for i in items
        ]
        params = {"k": k, "items": len(items), "index_dir": str(index_dir), "embedder": embedder.name}
        run_id = log_run(tracking, RunRecord("voc-learn", params, metrics, {"kind": "learning"}, table))
    return LearningResult(
        len(items), update, learned_before, learned_after, regression_before, regression_after, run_id
    )


# ------------------------------------------------------------------------------------ k-fold experiment


@dataclass(frozen=True)
class FoldResult:
    """One held-out fold: the metrics without and with the variations learned from the other folds."""

    fold: int
    queries: int
    learned_variations: int
    without: dict[str, float]
    with_learning: dict[str, float]


def fold_of(qids: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """A seeded, balanced assignment of query ids to folds."""
    if folds < 2 or len(qids) < folds:
        raise LearningDataError(
            f"need at least {folds} queries and 2 folds, got {len(qids)} queries, {folds} folds"
        )
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    return {q: i % folds for i, q in enumerate(order)}


def learned_chunks(data: RetrievalData, train: Sequence[str], grade: int = LINK_GRADE) -> tuple[list, int]:  # type: ignore[type-arg]
    """The corpus as FAQ chunks, each with the training queries linked to it as variations."""
    extra: dict[str, list[str]] = {}
    for qid in train:
        for doc, g in data.qrels[qid].items():
            if g >= grade:
                extra.setdefault(doc, []).append(data.queries[qid])
    chunks = []
    for chunk in corpus_chunks(data.corpus):
        added = extra.get(chunk.source_id)
        if added:
            entry = FaqEntry(
                chunk.source_id, chunk.question or "", chunk.answer or "", language=chunk.language
            )
            variations = tuple(dict.fromkeys(v for v in added if v != entry.question))
            chunk = faq_chunk(replace(entry, variations=variations))
        chunks.append(chunk)
    return chunks, sum(len(v) for v in extra.values())


def kfold_learning(
    data: RetrievalData, embedder: Embedder, *, folds: int = 5, seed: int = 0, k: int = 10,
) -> list[FoldResult]:  # fmt: skip
    """Recall@k on each held-out fold, without and with learning from the other folds."""
    assignment = fold_of(list(data.qrels), folds, seed)
    base = KnowledgeIndex.from_chunks(corpus_chunks(data.corpus), embedder)
    out = []
    for fold in range(folds):
        test = [q for q, f in assignment.items() if f == fold]
        train = [q for q, f in assignment.items() if f != fold]
        qrels = {q: data.qrels[q] for q in test}
        queries = {q: data.queries[q] for q in test}
        chunks, n_learned = learned_chunks(data, train)
        learned = KnowledgeIndex.from_chunks(chunks, embedder)
        out.append(
            FoldResult(
                fold,
                len(test),
                n_learned,
                retrieval_report(_runs(base, queries, k), qrels, k),
                retrieval_report(_runs(learned, queries, k), qrels, k),
            )  # fmt: skip
        )
    return out


def summarize_folds(results: Sequence[FoldResult]) -> dict[str, float]:
    """Query-weighted means over the folds, without and with learning."""
    total = sum(r.queries for r in results)
    out: dict[str, float] = {"queries": float(total), "folds": float(len(results))}
    for metric in results[0].without:
        if metric == "queries":
            continue
        out[f"{metric}/without"] = sum(r.without[metric] * r.queries for r in results) / total
        out[f"{metric}/with_learning"] = sum(r.with_learning[metric] * r.queries for r in results) / total
    return out


def log_kfold(tracking: TrackingConfig, results: Sequence[FoldResult], params: Mapping[str, object]) -> str:
    """Log the experiment as one MLflow run: summary metrics and one table row per fold."""
    table = [
        {
            "fold": r.fold,
            "queries": r.queries,
            "learned_variations": r.learned_variations,
            **{f"{m}/without": v for m, v in r.without.items()},
            **{f"{m}/with_learning": v for m, v in r.with_learning.items()},
        }  # fmt: skip
        for r in results
    ]
    record = RunRecord(
        "voc-learning-kfold", dict(params), summarize_folds(results), {"kind": "learning"}, table
    )
    return log_run(tracking, record)


# ------------------------------------------------------------------------------- fine-tuning the model


def is_better(before: Mapping[str, float], after: Mapping[str, float], metric: str = "recall@10") -> bool:
    """The gate of a tuned model: strictly better on ``metric``, and no worse on MRR."""
    mrr = next((m for m in before if m.startswith("mrr@")), None)
    return after[metric] > before[metric] and (mrr is None or after[mrr] >= before[mrr])


@dataclass(frozen=True)
class FinetuneFoldResult:
    """One held-out fold under four configurations: base/tuned model, without/with learned variations."""

    fold: int
    queries: int
    pairs: int
    base: dict[str, float]
    base_variations: dict[str, float]
    tuned: dict[str, float]
    tuned_variations: dict[str, float]
    goes_live: bool


def finetune_fold(
    data: RetrievalData, base_model: Path, base_embedder: Embedder, workdir: Path, *, fold: int = 0,
    folds: int = 5, seed: int = 0, k: int = 10, config: FinetuneConfig | None = None,
) -> FinetuneFoldResult:  # fmt: skip
    """Fine-tune on the other folds' (query, grade-2 entry) pairs; measure the held-out fold."""
    from index.cache import CachedEmbedder, EmbeddingCache
    from index.embed import SentenceTransformerEmbedder

    assignment = fold_of(list(data.qrels), folds, seed)
    test = [q for q, f in assignment.items() if f == fold]
    train = [q for q, f in assignment.items() if f != fold]
    qrels, queries = {q: data.qrels[q] for q in test}, {q: data.queries[q] for q in test}
    plain = corpus_chunks(data.corpus)
    learned, _ = learned_chunks(data, train)
    text = {c.source_id: embed_text(c) for c in plain}
    pairs = [
        TrainingPair(data.queries[q], text[doc])
        for q in train
        for doc, g in data.qrels[q].items()
        if g >= LINK_GRADE
    ]
    tuned_path = finetune_model(base_model, pairs, workdir / "model", config or FinetuneConfig())
    tuned = CachedEmbedder(
        SentenceTransformerEmbedder(tuned_path), EmbeddingCache(workdir / "embeddings.sqlite")
    )

    def measure(chunks: list, embedder: Embedder) -> dict[str, float]:  # type: ignore[type-arg]
        return retrieval_report(_runs(KnowledgeIndex.from_chunks(chunks, embedder), queries, k), qrels, k)

    base, tuned_plain = measure(plain, base_embedder), measure(plain, tuned)
    return FinetuneFoldResult(
        fold, len(test), len(pairs), base, measure(learned, base_embedder), tuned_plain,
        measure(learned, tuned), is_better(base, tuned_plain),
    )  # fmt: skip


FINETUNE_CONFIGS = ("base", "base_variations", "tuned", "tuned_variations")


def summarize_finetune_folds(results: Sequence[FinetuneFoldResult]) -> dict[str, float]:
    """Query-weighted means over the folds of each configuration, and how many folds the gate passed."""
    if not results:
        raise LearningDataError("no fine-tuning folds to summarize")
    total = sum(r.queries for r in results)
    out = {"queries": float(total), "folds": float(len(results)),
           "goes_live": float(sum(r.goes_live for r in results))}  # fmt: skip
    for config in FINETUNE_CONFIGS:
        for metric in getattr(results[0], config):
            if metric != "queries":
                weighted = sum(getattr(r, config)[metric] * r.queries for r in results)
                out[f"{metric}/{config}"] = weighted / total
    return out


def finetune_kfold_record(results: Sequence[FinetuneFoldResult], params: Mapping[str, object]) -> RunRecord:
    """The MLflow run of a fine-tuning experiment: the summary as metrics, one table row per fold."""
    table = [
        {
            "fold": r.fold,
            "queries": r.queries,
            "pairs": r.pairs,
            "goes_live": r.goes_live,
            **{f"{m}/{c}": v for c in FINETUNE_CONFIGS for m, v in getattr(r, c).items()},
        }  # fmt: skip
        for r in results
    ]
    return RunRecord("voc-finetune-kfold", dict(params), summarize_finetune_folds(results),
                     {"kind": "learning"}, table)  # fmt: skip


@dataclass(frozen=True)
class FinetuneGate:
    """A tuned model measured against the live one on held-out reviewed questions."""

    held_out: int
    before: dict[str, float]
    after: dict[str, float]
    goes_live: bool


def without_variations(chunks: Sequence[Chunk], questions: Iterable[str]) -> list[Chunk]:
    """``chunks`` with ``questions`` removed from every FAQ entry's question variations.

    A reviewed question that ``voc learn`` already wrote into the knowledge base is found by its own
    text; judging a model on it would measure that copy, not the model.
    """
    drop = {" ".join(q.split()) for q in questions}
    out = []
    for c in chunks:
        kept = tuple(v for v in c.variations if " ".join(v.split()) not in drop)
        out.append(c if len(kept) == len(c.variations) else replace(c, variations=kept))
    return out


def gate_finetuned(
    index: KnowledgeIndex, questions: Mapping[str, tuple[str, str]], tuned: Embedder, *, k: int = 10
) -> FinetuneGate:
    """Compare retrieval of held-out ``questions`` by the live model and by ``tuned``.

    Both sides search the live knowledge base with the held-out questions taken out of the question
    variations (``without_variations``), so the gate measures what each model makes of a question it
    has not seen; the live side re-embeds only what its cache lacks (the stripped entries).
    """
    if not questions:
        raise LearningDataError("no held-out questions to judge the tuned model on")
    chunks = without_variations(index.chunks, (q for q, _ in questions.values()))
    if chunks != index.chunks:
        index = KnowledgeIndex.from_chunks(chunks, index.embedder, index.fusion)
    before = evaluate_questions(index, questions, k)
    after = evaluate_questions(KnowledgeIndex.from_chunks(chunks, tuned, index.fusion), questions, k)
    return FinetuneGate(len(questions), before, after, is_better(before, after, f"recall@{k}"))

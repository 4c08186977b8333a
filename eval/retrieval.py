"""Retrieval evaluation over data in the LocalgovFAQ format (corpus.json, queries.json, qrels.json).

Protocol (../shared/data/README.md): grade >= 1 counts as relevant; nDCG uses the grade as gain; the
corpus is the full entry. Entries written ``Question: ...\\nAnswer: ...`` become FAQ entries (question
and answer matched separately by the hybrid index); any other text becomes an FAQ entry whose question
is its first line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from eval.metrics.retrieval import retrieval_report
from index.chunk import faq_chunk
from index.documents import Chunk, FaqEntry
from index.embed import Embedder
from index.search import FusionConfig, KnowledgeIndex
from index.textja import detect_language


class RetrievalDataError(ValueError):
    """A corpus, queries or qrels file is not in the expected format."""


@dataclass(frozen=True)
class RetrievalData:
    """A retrieval benchmark: documents, queries and graded judgements."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


# Retriever configurations a run can compare; "hybrid" is the product's default fusion.
MODES: dict[str, FusionConfig] = {
    "hybrid": FusionConfig(),
    "dense": FusionConfig(sparse_weight=0.0),
    "dense_text": FusionConfig(sparse_weight=0.0, question_weight=0.0, answer_weight=0.0),
    "bm25": FusionConfig(text_weight=0.0, question_weight=0.0, answer_weight=0.0),
}


def _read_json_object(path: Path, what: str) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetrievalDataError(f"{what} file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RetrievalDataError(f"{path}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise RetrievalDataError(f"{path}: expected a non-empty JSON object {{id: ...}} for the {what}")
    return data


def load_retrieval_data(corpus: Path, queries: Path, qrels: Path) -> RetrievalData:
    """Read and validate the three files."""
    c = _read_json_object(corpus, "corpus")
    q = _read_json_object(queries, "queries")
    r = _read_json_object(qrels, "qrels")
    for name, data in (("corpus", c), ("queries", q)):
        bad = next((k for k, v in data.items() if not isinstance(v, str) or not v.strip()), None)
        if bad is not None:
            raise RetrievalDataError(f"{name} entry {bad!r} is not a non-empty string")
    clean_qrels: dict[str, dict[str, int]] = {}
    for qid, judged in r.items():
        if not isinstance(judged, dict) or not all(isinstance(g, int) for g in judged.values()):
            raise RetrievalDataError(f"qrels entry {qid!r} must map doc ids to integer grades")
        unknown = [d for d in judged if d not in c]
        if unknown:
            raise RetrievalDataError(f"qrels entry {qid!r} names doc ids not in the corpus: {unknown[:5]}")
        if qid in q:
            clean_qrels[qid] = dict(judged)
    if not clean_qrels:
        raise RetrievalDataError("no qrels entry matches a query id")
    return RetrievalData(corpus=dict(c), queries=dict(q), qrels=clean_qrels)  # type: ignore[arg-type]


def corpus_chunks(corpus: Mapping[str, str]) -> list[Chunk]:
    """One FAQ chunk per corpus entry; ``Question:``/``Answer:`` text is split into its two fields."""
    chunks = []
    for doc_id, text in corpus.items():
        question, answer = _split_qa(text)
        entry = FaqEntry(id=doc_id, question=question, answer=answer, language=detect_language(text))
        chunks.append(faq_chunk(entry))
    return chunks


def _split_qa(text: str) -> tuple[str, str]:
    if text.startswith("Question:") and "\nAnswer:" in text:
        q, a = text[len("Question:") :].split("\nAnswer:", 1)
        return q.strip(), a.strip() or q.strip()
    first, _, rest = text.strip().partition("\n")
    return first.strip(), (rest.strip() or first.strip())


def run_retrieval(
    data: RetrievalData,
    embedder: Embedder,
    *,
    k: int = 10,
    modes: Sequence[str] = ("hybrid",),
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Index the corpus once, run every query in each mode, and report the metrics per mode."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")
    chunks = corpus_chunks(data.corpus)
    index = KnowledgeIndex.from_chunks(chunks, embedder)
    qids = list(data.qrels)
    texts = [data.queries[q] for q in qids]
    # The query vectors are computed once (the cache makes later modes free).
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        index.fusion = MODES[mode]
        runs: dict[str, list[str]] = {}
        bar = tqdm(total=len(qids), desc=f"search ({mode})", disable=not progress)
        for start in range(0, len(qids), batch_size):
            batch = qids[start : start + batch_size]
            hits = index.search_many(texts[start : start + batch_size], k)
            for qid, row in zip(batch, hits, strict=True):
                runs[qid] = [h.chunk.source_id for h in row]
            bar.update(len(batch))
        bar.close()
        results[mode] = retrieval_report(runs, data.qrels, k)
    return results

"""Fit the shipped confidence model on the demo knowledge base.

Run ``python -m assistant.fit_default_confidence`` to rewrite ``assistant/data/confidence_default.json``.

Labelled data without any chat logs, by holding parts of the knowledge base out:
- leave-one-variation-out: fold j removes the j-th question variation of every FAQ entry from the
  index and asks it as a customer question; the answer is right when the top hit is that entry;
- leave-entries-out (``left_out_share``, 10%): each fold also removes a random share of the entries,
  so that their variations are questions the knowledge base cannot answer. Kept small for the demo:
  its entries come in deliberate near-duplicate pairs, so a left-out entry's sibling is often a
  partial answer, counted wrong (with 20% left out, 95% precision held only over the top 2% of
  answers). Written on-topic questions the knowledge base does not answer cover its gaps too;
- each FAQ question asked verbatim (a customer picking or pasting it), so that the model knows a
  verbatim match, which held-out variations never are;
- whole-sentence customer questions with the entries that answer them
  (``assistant/data/confidence_training_questions.yaml``), spread over the folds: right when the top
  hit is one of those entries (and it is in the fold's index);
- written out-of-scope questions (``assistant/data/confidence_training_oos.yaml``, Japanese and
  English), spread over the folds: any answer is wrong.
The same features, model and threshold rule as the product and the CLINC150 evaluation
(``eval/escalation.py``). The evaluation issue refits the model from resolved chats.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from assistant.confidence import (
    DEFAULT_ARTIFACT,
    ConfidenceFeatures,
    ConfidenceModel,
    EntryVectors,
    fit_confidence_model,
)
from index.chunk import chunk_documents
from index.documents import Chunk
from index.embed import Embedder
from index.ingest import load_sources
from index.search import KnowledgeIndex

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_KB = REPO / "demo" / "kb"
DEFAULT_OOS = Path(__file__).parent / "data" / "confidence_training_oos.yaml"
DEFAULT_QUESTIONS = Path(__file__).parent / "data" / "confidence_training_questions.yaml"
SEARCH_K = 10


@dataclass(frozen=True)
class Query:
    """A question and the sources whose answer is right for it (empty: none)."""

    text: str
    answers: frozenset[str]

    def without(self, left_out: set[str]) -> Query:
        """The same question against an index that lacks ``left_out``."""
        return Query(self.text, self.answers - left_out)


def load_oos_questions(path: Path) -> list[str]:
    """The written out-of-scope questions, all languages together."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of language -> list of questions")
    return [str(q) for questions in data.values() for q in questions]


def load_answerable_questions(path: Path) -> list[Query]:
    """The written customer questions with their right sources."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = data.get("answerable") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("q") and r.get("a") for r in rows):
        raise ValueError(f"{path}: expected 'answerable: [{{q: question, a: [source ids]}}, ...]'")
    return [Query(str(r["q"]), frozenset(map(str, r["a"]))) for r in rows]


def _fold_index_and_queries(
    chunks: Sequence[Chunk], fold: int, left_out: set[str]
) -> tuple[list[Chunk], list[Query]]:
    """Fold ``fold``: the index without each entry's variation ``fold`` (and without ``left_out``)."""
    indexed: list[Chunk] = []
    queries: list[Query] = []
    for c in chunks:
        held = c.variations[fold] if fold < len(c.variations) else None
        if held is not None:
            queries.append(Query(held, frozenset({c.source_id}) - left_out))
        if c.source_id in left_out:
            continue
        kept = tuple(v for i, v in enumerate(c.variations) if i != fold)
        indexed.append(replace(c, variations=kept) if held is not None else c)
    return indexed, queries


def training_features(
    kb_sources: Sequence[Path],
    questions: Sequence[Query],
    embedder: Embedder,
    *,
    left_out_share: float = 0.1,
    seed: int = 0,
) -> tuple[list[ConfidenceFeatures], np.ndarray, np.ndarray]:
    """Features, right/wrong labels and fold ids of every held-out variation and written question.

    ``questions`` holds the written questions, answerable and out of scope (no answers) alike.
    """
    chunks = chunk_documents(load_sources(kb_sources))
    faq_ids = sorted({c.source_id for c in chunks if c.variations})
    folds = max((len(c.variations) for c in chunks), default=0)
    if folds < 2:
        raise ValueError("the knowledge base needs FAQ entries with at least two variations")
    rng = np.random.default_rng(seed)
    verbatim = [Query(c.question, frozenset({c.source_id})) for c in chunks if c.kind == "faq" and c.question]
    questions = [*questions, *verbatim]
    order = rng.permutation(len(questions))
    feats: list[ConfidenceFeatures] = []
    labels: list[bool] = []
    fold_ids: list[int] = []
    for fold in range(folds):
        left_out = set(rng.choice(faq_ids, size=round(left_out_share * len(faq_ids)), replace=False))
        indexed, queries = _fold_index_and_queries(chunks, fold, left_out)
        queries += [questions[i].without(left_out) for i in order[fold::folds]]
        index = KnowledgeIndex.from_chunks(indexed, embedder)
        texts = [q.text for q in queries]
        vectors = embedder.embed_queries(texts)
        hits = index.search_many(texts, SEARCH_K, query_vectors=vectors)
        assessed = EntryVectors.from_index(index).assess(texts, hits, vectors)
        for q, a in zip(queries, assessed, strict=True):
            if a.features is None:
                continue
            feats.append(a.features)
            labels.append(a.hits[0].chunk.source_id in q.answers)
            fold_ids.append(fold)
        log.info("fold %d: %d questions, %d entries left out", fold, len(queries), len(left_out))
    return feats, np.array(labels, dtype=bool), np.array(fold_ids, dtype=np.int64)


def fit_default_confidence(
    embedder: Embedder,
    *,
    kb_sources: Sequence[Path] = (DEFAULT_KB,),
    oos_path: Path = DEFAULT_OOS,
    questions_path: Path = DEFAULT_QUESTIONS,
    out: Path | None = DEFAULT_ARTIFACT,
    target_precision: float = 0.95,
    left_out_share: float = 0.1,
    seed: int = 0,
) -> ConfidenceModel:
    """Fit on the demo knowledge base and (unless ``out`` is None) write the artifact."""
    oos = load_oos_questions(oos_path)
    answerable = load_answerable_questions(questions_path)
    questions = answerable + [Query(q, frozenset()) for q in oos]
    feats, labels, fold_ids = training_features(
        kb_sources, questions, embedder, left_out_share=left_out_share, seed=seed
    )
    where = ", ".join(_shown(p) for p in kb_sources)
    model = fit_confidence_model(
        feats, labels, fold_ids=fold_ids, target_precision=target_precision,
        fitted_on=(
            f"demo KB ({where}): leave-one-variation-out ({left_out_share:.0%} of entries left out per "
            f"fold), FAQ questions asked verbatim, {len(answerable)} written customer questions "
            f"({questions_path.name}) and {len(oos)} written "
            f"out-of-scope questions ({oos_path.name}); {len(labels)} questions, "
            f"{int(labels.sum())} answered right; embedder {embedder.name}; seed {seed}"
        ),
    )
    if out is not None:
        model.save(out)
    return model


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: refit the shipped default artifact."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kb", type=Path, nargs="+", default=[DEFAULT_KB])
    parser.add_argument("--oos", type=Path, default=DEFAULT_OOS)
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--embedder", default="default")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/madoguchi").expanduser())
    parser.add_argument("--target-precision", type=float, default=0.95)
    args = parser.parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # an entry point: keep the model hub away
        os.environ.setdefault(key, "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from index.cache import CachedEmbedder, EmbeddingCache
    from index.embed import load_embedder

    embedder = CachedEmbedder(load_embedder(args.embedder, args.cache_dir),
                              EmbeddingCache(args.cache_dir / "embeddings.sqlite"))
    model = fit_default_confidence(embedder, kb_sources=args.kb, oos_path=args.oos, out=args.out,
                                   target_precision=args.target_precision)
    print(f"wrote {args.out}: threshold {model.threshold:.3f}, metrics {model.metrics}")


if __name__ == "__main__":
    main()

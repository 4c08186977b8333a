"""The knowledge base a suite answers from, built with the product's own ingestion and chunking.

Kinds:
- ``sources``: FAQ and manual files or folders, ingested exactly as ``madoguchi index build`` does;
- ``localgovfaq``: a LocalgovFAQ ``corpus.json``, one FAQ entry per document (``eval.retrieval``);
- ``clinc150``: one FAQ entry per intent of the training split, its utterances as variations;
- ``doc2dial``: ``docs.jsonl``, each document a manual cut by the product's chunker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eval.datasets import DatasetError
from eval.escalation import intent_chunks, load_intents
from eval.retrieval import corpus_chunks
from index.chunk import ChunkingConfig, chunk_documents, manual_chunks
from index.documents import Chunk, Manual, Section
from index.embed import Embedder
from index.ingest import load_sources
from index.search import KnowledgeIndex

KnowledgeKind = Literal["sources", "localgovfaq", "clinc150", "doc2dial"]


@dataclass(frozen=True)
class KnowledgeSpec:
    """What to index: a kind and its paths (already resolved)."""

    kind: KnowledgeKind
    paths: tuple[Path, ...]
    max_tokens: int = 320  # manual chunk budget (the product's default)
    overlap_tokens: int = 48

    def describe(self) -> dict[str, object]:
        """For MLflow parameters."""
        return {
            "kind": self.kind,
            "paths": [str(p) for p in self.paths],
            "max_tokens": self.max_tokens,
            "overlap_tokens": self.overlap_tokens,
        }


def _one(spec: KnowledgeSpec) -> Path:
    if len(spec.paths) != 1:
        raise DatasetError(f"knowledge kind {spec.kind!r} takes one path, got {len(spec.paths)}")
    path = spec.paths[0]
    if not path.exists():
        raise DatasetError(f"knowledge file not found: {path}")
    return path


def doc2dial_chunks(path: Path, config: ChunkingConfig) -> list[Chunk]:
    """Each ``docs.jsonl`` document as a manual titled by its doc id (without the ``#...`` suffix)."""
    chunks: list[Chunk] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            doc_id, text = str(doc["doc_id"]), str(doc["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: line {n + 1} is not a doc2dial document ({exc})") from exc
        title = doc_id.split("#", 1)[0].strip()
        manual = Manual(
            id=doc_id,
            title=title,
            sections=(Section((title,), text),),
            category=str(doc.get("domain") or "") or None,
            language="en",
        )
        chunks.extend(manual_chunks(manual, config))
    return chunks


def knowledge_chunks(spec: KnowledgeSpec) -> list[Chunk]:
    """The chunks of a knowledge spec."""
    config = ChunkingConfig(max_tokens=spec.max_tokens, overlap_tokens=spec.overlap_tokens)
    if spec.kind == "sources":
        missing = [p for p in spec.paths if not p.exists()]
        if missing or not spec.paths:
            raise DatasetError(f"knowledge sources not found: {[str(p) for p in missing] or '(none given)'}")
        return chunk_documents(load_sources(spec.paths, root=_common_root(spec.paths)), config)
    path = _one(spec)
    if spec.kind == "localgovfaq":
        corpus = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(corpus, dict):
            raise DatasetError(f"{path}: expected a JSON object {{doc_id: text}}")
        return corpus_chunks(corpus)
    if spec.kind == "clinc150":
        return intent_chunks(load_intents(path).train)
    if spec.kind == "doc2dial":
        return doc2dial_chunks(path, config)
    raise DatasetError(f"unknown knowledge kind {spec.kind!r}")


def _common_root(paths: Sequence[Path]) -> Path:
    """The folder manual ids are relative to (as ``madoguchi index build`` computes it)."""
    dirs = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath(dirs))


def build_knowledge_index(spec: KnowledgeSpec, embedder: Embedder) -> KnowledgeIndex:
    """Embed and index the knowledge in memory."""
    return KnowledgeIndex.from_chunks(knowledge_chunks(spec), embedder)

"""Build and update an index on disk incrementally.

Unchanged documents cost nothing: their chunks and vectors are carried over from the live generation.
Changed documents are re-chunked and only texts never embedded before are embedded (an FAQ entry that
gains a question variation costs one embedding). Deleted documents disappear. Every update writes a new
generation atomically (see ``index.store``), under a lock so two writers never interleave.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.chunk import ChunkingConfig, chunk_document
from index.documents import Chunk, SourceDoc, content_hash
from index.embed import Embedder
from index.ingest import load_sources
from index.search import (
    FusionConfig,
    KnowledgeIndex,
    VectorUnit,
    build_bm25,
    build_faiss,
    chunk_terms,
    is_query_like,
    vector_units,
)
from index.store import (
    IndexNotFoundError,
    SourceRecord,
    current_generation,
    generation_manifest,
    load_index,
    publish_generation,
    read_chunks,
    read_manifest,
    read_sources,
    save_index,
)

log = logging.getLogger(__name__)
_EMBED_BATCH = 256


@dataclass(frozen=True)
class UpdateReport:
    """What an update did."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int
    embedded: int
    chunks: int
    vectors: int
    generation: Path | None


@contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Hold the index's writer lock (every update takes it; not re-entrant)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_index(
    directory: Path,
    paths: Sequence[Path],
    embedder: Embedder,
    *,
    chunking: ChunkingConfig | None = None,
    fusion: FusionConfig | None = None,
    root: Path | None = None,
    progress: bool = False,
) -> UpdateReport:
    """Make the index at ``directory`` hold exactly the documents under ``paths`` (incrementally)."""
    docs = load_sources(paths, root)  # raises before anything is written
    return _apply(
        directory,
        embedder,
        docs,
        replace_all=True,
        remove=(),
        chunking=chunking,
        fusion=fusion,
        progress=progress,
    )


def add_documents(
    directory: Path,
    paths: Sequence[Path],
    embedder: Embedder,
    *,
    root: Path | None = None,
    progress: bool = False,
) -> UpdateReport:
    """Add or replace the documents under ``paths``, keeping every other document."""
    docs = load_sources(paths, root)
    return _apply(
        directory, embedder, docs, replace_all=False, remove=(), chunking=None, fusion=None, progress=progress
    )


def remove_documents(directory: Path, ids: Iterable[str], embedder: Embedder) -> UpdateReport:
    """Remove documents by source id (an FAQ id, a manual id such as ``manual:guide``) or file path."""
    wanted = set(ids)
    known = read_sources(directory)
    matched = {s.id for s in known.values() if s.id in wanted or s.path in wanted}
    unknown = wanted - matched - {s.path for s in known.values() if s.id in matched}
    if unknown:
        raise KeyError(f"no such document(s) in the index: {sorted(unknown)}")
    return _apply(
        directory,
        embedder,
        [],
        replace_all=False,
        remove=tuple(sorted(matched)),
        chunking=None,
        fusion=None,
        progress=False,
    )


def _apply(
    directory: Path,
    embedder: Embedder,
    docs: Sequence[SourceDoc],
    *,
    replace_all: bool,
    remove: tuple[str, ...],
    chunking: ChunkingConfig | None,
    fusion: FusionConfig | None,
    progress: bool,
) -> UpdateReport:
    with writer_lock(directory):
        old, old_sources, old_chunking = _load_previous(directory, embedder)
        chunking = chunking or old_chunking or ChunkingConfig()
        rechunk_all = old_chunking is not None and old_chunking != chunking
        fusion = fusion or (old.fusion if old else FusionConfig())
        new_ids = {d.id for d in docs}
        keep = [
            s for s in old_sources.values() if s.id not in new_ids and s.id not in remove and not replace_all
        ]
        # With another embedder the old vectors are useless, but its chunks are still the documents'.
        old_chunks = {c.id: c for c in (old.chunks if old else _live_chunks(directory, old_sources))}
        chunks: list[Chunk] = [old_chunks[cid] for s in keep for cid in s.chunk_ids]
        records = {s.id: s for s in keep}
        added, changed = [], []
        for doc in docs:
            prev = old_sources.get(doc.id)
            if prev and prev.content_hash == doc.content_hash and not rechunk_all:
                doc_chunks = [old_chunks[cid] for cid in prev.chunk_ids]
            else:
                doc_chunks = chunk_document(doc, chunking)
                (changed if prev else added).append(doc.id)
            chunks.extend(doc_chunks)
            records[doc.id] = SourceRecord(
                doc.id, doc.path, doc.kind, doc.content_hash, tuple(c.id for c in doc_chunks)
            )
        removed = tuple(sorted(set(old_sources) - set(records)))
        index, embedded = _assemble(chunks, embedder, old, fusion, progress)
        gen = save_index(index, directory, records, chunking)
        report = UpdateReport(
            tuple(added),
            tuple(changed),
            removed,
            len(records) - len(added) - len(changed),
            embedded,
            len(chunks),
            len(index.units),
            gen,
        )
        log.debug("index %s: %s", directory, report)
        return report


def _load_previous(
    directory: Path, embedder: Embedder
) -> tuple[KnowledgeIndex | None, dict[str, SourceRecord], ChunkingConfig | None]:
    try:
        manifest = read_manifest(directory)
    except IndexNotFoundError:
        return None, {}, None
    c = manifest["chunking"]
    chunking = ChunkingConfig(max_tokens=c["max_tokens"], overlap_tokens=c["overlap_tokens"])
    if manifest["embedder"] != embedder.name:
        log.warning(
            "index %s was built with %s; re-embedding everything with %s",
            directory,
            manifest["embedder"],
            embedder.name,
        )
        return None, read_sources(directory), chunking
    return load_index(directory, embedder), read_sources(directory), chunking


def _live_chunks(directory: Path, sources: dict[str, SourceRecord]) -> list[Chunk]:
    return read_chunks(current_generation(directory))[0] if sources else []


def _unit_key(unit: VectorUnit) -> str:
    return content_hash("query" if is_query_like(unit.field) else "passage", unit.text)


def _assemble(
    chunks: list[Chunk], embedder: Embedder, old: KnowledgeIndex | None, fusion: FusionConfig, progress: bool
) -> tuple[KnowledgeIndex, int]:
    """Index ``chunks``, reusing the previous generation's vectors and embedding only new texts."""
    units = vector_units(chunks)
    known: dict[str, np.ndarray] = {}
    if old is not None and old.faiss_index.ntotal:
        old_vecs = old.faiss_index.reconstruct_n(0, old.faiss_index.ntotal)
        known = {_unit_key(u): old_vecs[i] for i, u in enumerate(old.units)}
    vectors = np.zeros((len(units), embedder.dim), dtype=np.float32)
    todo = [i for i, u in enumerate(units) if _unit_key(u) not in known]
    for i, u in enumerate(units):
        vec = known.get(_unit_key(u))
        if vec is not None:
            vectors[i] = vec
    bar = tqdm(total=len(todo), desc="embedding", unit="text", disable=not progress)
    for start in range(0, len(todo), _EMBED_BATCH):
        part = todo[start : start + _EMBED_BATCH]
        docs = [i for i in part if not is_query_like(units[i].field)]
        queries = [i for i in part if is_query_like(units[i].field)]
        if docs:
            vectors[docs] = embedder.embed_documents([units[i].text for i in docs])
        if queries:
            vectors[queries] = embedder.embed_queries([units[i].text for i in queries])
        bar.update(len(part))
    bar.close()
    old_terms = {c: t for c, t in zip(old.chunks, old.chunk_terms, strict=True)} if old else {}
    term_lists = [old_terms[c] if c in old_terms else chunk_terms(c) for c in chunks]
    index = KnowledgeIndex(
        chunks=chunks,
        units=units,
        faiss_index=build_faiss(vectors),
        bm25=build_bm25(term_lists),
        chunk_terms=term_lists,
        embedder=embedder,
        fusion=fusion,
    )
    return index, len(todo)


def reembed_index(
    directory: Path,
    embedder: Embedder,
    *,
    commit: Callable[[Path, Path], None] | None = None,
    progress: bool = False,
) -> Path:
    """Write the live index's documents again as a new generation embedded by ``embedder``.

    The same chunks, sources, chunking and fusion; only the vectors change (a new embedding model).
    Under the writer lock: the generation is written completely, then ``commit(new, replaced)`` runs
    (it records whatever must agree with the live index, e.g. the active model) and only then does
    the new generation go live. A crash before ``commit`` leaves everything as it was; a crash after
    it leaves a record naming ``new`` and ``replaced`` for the caller's recovery to finish.
    """
    with writer_lock(directory):
        live = current_generation(directory)
        manifest = generation_manifest(live)
        chunks, _ = read_chunks(live)
        c = manifest["chunking"]
        chunking = ChunkingConfig(max_tokens=c["max_tokens"], overlap_tokens=c["overlap_tokens"])
        fusion = FusionConfig(**manifest.get("fusion", {}))
        index, _ = _assemble(chunks, embedder, None, fusion, progress)
        gen = save_index(index, directory, read_sources(directory), chunking, publish=False)
        if commit is not None:
            commit(gen, live)
        publish_generation(directory, gen)
        return gen

"""Saving and loading a ``KnowledgeIndex`` on disk, atomically.

Layout: ``<dir>/CURRENT`` names the live generation ``<dir>/gen-<stamp>/`` holding ``manifest.json``,
``chunks.jsonl``, ``units.json``, ``dense.faiss``, ``sources.json``. A save writes a whole new
generation, fsyncs it, then replaces ``CURRENT`` with ``os.replace``: a crash at any point leaves the
previous generation live and loadable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss

from index.chunk import ChunkingConfig
from index.documents import Chunk
from index.embed import Embedder
from index.search import FusionConfig, KnowledgeIndex, VectorUnit, build_bm25

FORMAT_VERSION = 1
_KEEP_GENERATIONS = 2


class IndexNotFoundError(FileNotFoundError):
    """No index has been built at the given path."""


class IndexMismatchError(ValueError):
    """The index on disk was built with another embedder or format than the one asked for."""


@dataclass(frozen=True)
class SourceRecord:
    """What the index knows of one source document, to tell what changed on the next update."""

    id: str
    path: str
    kind: str
    content_hash: str
    chunk_ids: tuple[str, ...]


def save_index(
    index: KnowledgeIndex,
    directory: Path,
    sources: dict[str, SourceRecord],
    chunking: ChunkingConfig,
    *,
    publish: bool = True,
) -> Path:
    """Write ``index`` as a new generation and make it live; return the generation directory.

    With ``publish=False`` the generation is written completely but ``CURRENT`` is left alone: the
    caller records what it must first (e.g. the active model) and then calls ``publish_generation``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    gen = directory / f"gen-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    tmp = gen.with_name(gen.name + ".tmp")
    tmp.mkdir()
    faiss.write_index(index.faiss_index, str(tmp / "dense.faiss"))
    with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as fh:
        for chunk, chunk_terms in zip(index.chunks, index.chunk_terms, strict=True):
            row = dataclasses.asdict(chunk) | {"terms": chunk_terms}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    _write_json(tmp / "units.json", [[u.chunk_index, u.field, u.text] for u in index.units])
    _write_json(tmp / "sources.json", [dataclasses.asdict(s) for s in sources.values()])
    manifest = {
        "format_version": FORMAT_VERSION,
        "embedder": index.embedder.name,
        "dimension": index.embedder.dim,
        "faiss": type(index.faiss_index).__name__,
        "chunking": chunking.describe(),
        "fusion": index.fusion.describe(),
        "chunks": len(index.chunks),
        "vectors": len(index.units),
        "sources": len(sources),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(tmp / "manifest.json", manifest)
    for f in tmp.iterdir():
        _fsync(f)
    os.replace(tmp, gen)
    fsync_dir(directory)
    if publish:
        publish_generation(directory, gen)
    return gen


def publish_generation(directory: Path, gen: Path) -> None:
    """Make the complete generation ``gen`` live (one atomic replace of ``CURRENT``), then prune."""
    if gen.parent.resolve() != directory.resolve() or not (gen / "manifest.json").is_file():
        raise IndexNotFoundError(f"{gen} is not a complete generation of {directory}")
    pointer = directory / "CURRENT.tmp"
    pointer.write_text(gen.name + "\n", encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, directory / "CURRENT")
    fsync_dir(directory)
    _prune(directory, keep=gen.name)


def current_generation(directory: Path) -> Path:
    """The live generation directory; ``IndexNotFoundError`` when there is none."""
    pointer = directory / "CURRENT"
    if not pointer.is_file():
        raise IndexNotFoundError(f"no index at {directory} (run `madoguchi index build` first)")
    gen = directory / pointer.read_text(encoding="utf-8").strip()
    if not (gen / "manifest.json").is_file():
        raise IndexNotFoundError(f"{pointer} names {gen.name}, which is missing or incomplete")
    return gen


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the live generation."""
    return generation_manifest(current_generation(directory))


def generation_manifest(gen: Path) -> dict[str, Any]:
    """The manifest of one generation directory (live or not)."""
    return dict(json.loads((gen / "manifest.json").read_text(encoding="utf-8")))


def read_sources(directory: Path) -> dict[str, SourceRecord]:
    """The source records of the live generation."""
    rows = json.loads((current_generation(directory) / "sources.json").read_text(encoding="utf-8"))
    return {r["id"]: SourceRecord(**{**r, "chunk_ids": tuple(r["chunk_ids"])}) for r in rows}


def load_index(directory: Path, embedder: Embedder, fusion: FusionConfig | None = None) -> KnowledgeIndex:
    """Load the live generation; the embedder must be the one the index was built with."""
    return load_generation(current_generation(directory), embedder, fusion)


def load_generation(gen: Path, embedder: Embedder, fusion: FusionConfig | None = None) -> KnowledgeIndex:
    """Load one generation directory (a server reloading reads ``CURRENT`` once, then this)."""
    manifest = generation_manifest(gen)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{gen}: index format {manifest.get('format_version')}, expected "
            f"{FORMAT_VERSION}; rebuild with `madoguchi index build`"
        )
    if manifest["embedder"] != embedder.name or manifest["dimension"] != embedder.dim:
        raise IndexMismatchError(
            f"{gen}: built with embedder {manifest['embedder']!r} (dim {manifest['dimension']}), "
            f"asked to load with {embedder.name!r} (dim {embedder.dim}); rebuild with `madoguchi index build`"
        )
    chunks, term_lists = read_chunks(gen)
    units = [VectorUnit(i, f, t) for i, f, t in json.loads((gen / "units.json").read_text(encoding="utf-8"))]
    return KnowledgeIndex(
        chunks=chunks,
        units=units,
        faiss_index=faiss.read_index(str(gen / "dense.faiss")),
        bm25=build_bm25(term_lists),
        chunk_terms=term_lists,
        embedder=embedder,
        fusion=fusion or FusionConfig(**manifest.get("fusion", {})),
    )


def read_chunks(gen: Path) -> tuple[list[Chunk], list[list[str]]]:
    """The chunks of a generation and their BM25 terms (no embedder needed)."""
    chunks: list[Chunk] = []
    term_lists: list[list[str]] = []
    with open(gen / "chunks.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            term_lists.append(row.pop("terms"))
            row["heading_path"] = tuple(row["heading_path"])
            row["variations"] = tuple(row["variations"])
            chunks.append(Chunk(**row))
    return chunks, term_lists


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    _fsync(path)


def _prune(directory: Path, keep: str) -> None:
    """Remove old generations (keeping the newest few, so a reader mid-load is not pulled from under)
    and leftovers of crashed writes. The live generation is never removed."""
    gens = sorted(
        (p for p in directory.glob("gen-*") if p.is_dir() and not p.name.endswith(".tmp")),
        key=lambda p: p.name,
    )
    pointer = directory / "CURRENT"
    live = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else keep
    for old in [g for g in gens if g.name not in (keep, live)][: max(0, len(gens) - _KEEP_GENERATIONS)]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in directory.glob("gen-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)

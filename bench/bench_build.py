"""Index build throughput vs the bare embedder, and a one-document update vs a full rebuild.

1. Build: ``build_index`` over N LocalgovFAQ entries (written as a JSONL FAQ file) against the bare
   embedder embedding the very same texts (each entry's full text as a passage and its question as a
   query, the vectors an index build computes), in the same process. Target ratio >= 0.85.
2. Update: a ~10k-chunk index (LocalgovFAQ answers as manuals, chunked small); the time to change one
   document, and to add one, against the full build of the same sources.

    .venv/bin/python -m bench.bench_build [--entries 600] [--update-chunks 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.corpus import corpus
from eval.retrieval import corpus_chunks
from index.build import build_index
from index.chunk import ChunkingConfig
from index.embed import load_embedder
from index.search import embed_units, vector_units


def bench_build(embedder, entries: int, work: Path) -> None:  # type: ignore[no-untyped-def]
    items = list(corpus().items())[:entries]
    chunks = corpus_chunks(dict(items))
    faq = work / "kb" / "faq.jsonl"
    faq.parent.mkdir(parents=True)
    with faq.open("w", encoding="utf-8") as fh:
        for c in chunks:
            fh.write(
                json.dumps(
                    {"id": c.source_id, "question": c.question, "answer": c.answer}, ensure_ascii=False
                )
            )
            fh.write("\n")
    units = vector_units(chunks)
    embed_units(embedder, units[:64])  # warm-up
    t = time.perf_counter()
    embed_units(embedder, units)
    bare = time.perf_counter() - t
    t = time.perf_counter()
    report = build_index(work / "idx", [faq.parent], embedder)
    built = time.perf_counter() - t
    print(f"build: {report.chunks} chunks, {report.vectors} vectors")
    print(
        f"  bare embedder {bare:.1f} s ({len(chunks) / bare:.1f} chunks/s); "
        f"index build {built:.1f} s ({report.chunks / built:.1f} chunks/s); "
        f"ratio {bare / built:.3f} (target >= 0.85)"
    )


def bench_update(embedder, target_chunks: int, work: Path) -> None:  # type: ignore[no-untyped-def]
    kb = work / "kb10k"
    kb.mkdir()
    docs = list(corpus().items())
    n = 0
    for doc_id, text in docs:
        (kb / f"{doc_id}.md").write_text(f"# {doc_id}\n\n## 回答\n{text}\n", encoding="utf-8")
        n += max(1, len(text) // 60)
        if n >= target_chunks:
            break
    chunking = ChunkingConfig(max_tokens=64, overlap_tokens=0)
    t = time.perf_counter()
    full = build_index(work / "idx10k", [kb], embedder, chunking=chunking, root=kb)
    full_s = time.perf_counter() - t
    first = sorted(kb.glob("*.md"))[0]
    first.write_text(first.read_text(encoding="utf-8") + "\n変更を加えた一文です。\n", encoding="utf-8")
    t = time.perf_counter()
    changed = build_index(work / "idx10k", [kb], embedder, chunking=chunking, root=kb)
    change_s = time.perf_counter() - t
    (kb / "zz-new.md").write_text("# 新しい手引き\n\n## 手順\n新しい文書を追加しました。\n", encoding="utf-8")
    t = time.perf_counter()
    added = build_index(work / "idx10k", [kb], embedder, chunking=chunking, root=kb)
    add_s = time.perf_counter() - t
    print(f"update: index of {full.chunks} chunks from {len(full.added)} documents")
    print(
        f"  full build {full_s:.1f} s; change one document {change_s:.2f} s (embedded {changed.embedded}, "
        f"{full_s / change_s:.0f}x faster); add one document {add_s:.2f} s (embedded {added.embedded}, "
        f"{full_s / add_s:.0f}x faster)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=600)
    parser.add_argument("--update-chunks", type=int, default=10000)
    parser.add_argument("--cache-dir", default="~/.cache/madoguchi")
    args = parser.parse_args()
    embedder = load_embedder("default", Path(args.cache_dir).expanduser())  # bare: no embedding cache
    with tempfile.TemporaryDirectory() as tmp:
        bench_build(embedder, args.entries, Path(tmp))
        if args.update_chunks:
            bench_update(embedder, args.update_chunks, Path(tmp))


if __name__ == "__main__":
    main()

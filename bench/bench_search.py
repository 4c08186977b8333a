"""Hybrid search latency at 1k, 10k and 100k chunks, against the bare query embedding time.

Baseline, measured in the same run: embedding one query with the same embedder (the floor of any
search). The 10k and 100k indexes reuse the real embeddings of LocalgovFAQ's 1,786 entries, replicated
with small Gaussian perturbations (renormalized) and their texts replicated with a suffix, because
embedding 100k chunks takes hours on this CPU. Resident memory is read from /proc after building.

    .venv/bin/python -m bench.bench_search [--queries 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import numpy as np

from bench.corpus import corpus, percentile, queries
from eval.retrieval import corpus_chunks
from index.cache import CachedEmbedder, EmbeddingCache
from index.embed import load_embedder
from index.search import KnowledgeIndex, build_bm25, build_faiss, chunk_terms, embed_units, vector_units


def rss_mb() -> float:
    """Current resident set size in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def replicated_index(
    base: KnowledgeIndex, vectors: np.ndarray, size: int, rng: np.random.Generator
) -> KnowledgeIndex:
    """An index of ``size`` chunks made of perturbed copies of ``base``'s chunks and vectors."""
    reps = -(-size // len(base.chunks))
    chunks, units, vecs, terms = [], [], [], []
    for r in range(reps):
        for i, c in enumerate(base.chunks):
            if len(chunks) >= size:
                break
            chunks.append(dataclasses.replace(c, id=f"{c.id}~{r}", source_id=f"{c.source_id}~{r}"))
            terms.append(base.chunk_terms[i] + ([f"rep{r}"] if r else []))
        for j, u in enumerate(base.units):
            if u.chunk_index + r * len(base.chunks) < len(chunks):
                units.append(dataclasses.replace(u, chunk_index=u.chunk_index + r * len(base.chunks)))
                v = vectors[j] + (rng.normal(0, 0.02, vectors.shape[1]) if r else 0)
                vecs.append(v / np.linalg.norm(v))
    mat = np.asarray(vecs, dtype=np.float32)
    return KnowledgeIndex(
        chunks=chunks,
        units=units,
        faiss_index=build_faiss(mat),
        bm25=build_bm25(terms),
        chunk_terms=terms,
        embedder=base.embedder,
    )


def time_calls(fn, items: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for q in items:
        t = time.perf_counter()
        fn(q)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--cache-dir", default="~/.cache/madoguchi")
    args = parser.parse_args()
    from pathlib import Path

    cache_dir = Path(args.cache_dir).expanduser()
    bare = load_embedder("default", cache_dir)
    # Corpus vectors come from the embedding cache (computed once); queries are embedded live.
    cached = CachedEmbedder(bare, EmbeddingCache(cache_dir / "embeddings.sqlite"))
    chunks = corpus_chunks(corpus())
    units = vector_units(chunks)
    vectors = embed_units(cached, units)
    base = KnowledgeIndex(
        chunks=chunks,
        units=units,
        faiss_index=build_faiss(vectors),
        bm25=build_bm25([chunk_terms(c) for c in chunks]),
        chunk_terms=[chunk_terms(c) for c in chunks],
        embedder=bare,
    )
    qs = queries()[: args.queries]
    bare.embed_queries(qs[:8])  # warm-up
    base_ms = time_calls(lambda q: bare.embed_queries([q]), qs)
    b50, b95 = percentile(base_ms, 50), percentile(base_ms, 95)
    print(f"baseline: bare query embedding p50 {b50:.2f} ms, p95 {b95:.2f} ms ({bare.name})")
    print(
        f"{'chunks':>8} {'vectors':>8} {'faiss':>14} {'p50 ms':>8} {'p95 ms':>8} {'p50/base':>9} "
        f"{'p95/base':>9} {'RSS MiB':>8}"
    )
    rng = np.random.default_rng(0)
    for size in [int(s) for s in args.sizes.split(",")]:
        index = replicated_index(base, vectors, size, rng)
        index.search(qs[0], 10)
        lat = time_calls(lambda q, ix=index: ix.search(q, 10), qs)
        p50, p95 = percentile(lat, 50), percentile(lat, 95)
        print(
            f"{size:>8} {len(index.units):>8} {type(index.faiss_index).__name__:>14} {p50:>8.2f} {p95:>8.2f} "
            f"{p50 / b50:>9.2f} {p95 / b95:>9.2f} {rss_mb():>8.0f}"
        )
        del index
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

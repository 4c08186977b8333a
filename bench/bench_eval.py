"""Evaluation-run throughput against the bare assistant turn on the same examples; MLflow logging time.

Baseline, measured in the same process on the same examples: a plain loop of
``Responder.respond(turn)`` (the API's turn without HTTP and database). The evaluation run is
``eval.run.replay`` plus ``compute_metrics`` (per-example bookkeeping, failure capture, retrieval,
escalation and latency metrics), without MLflow. Both passes run after a warm-up pass, so the query
embedding cache serves both alike; each is repeated and the best time kept. MLflow logging (params,
metrics, the per-example table and the two PNG plots) is timed separately into a fresh SQLite store:
the first run (which creates the store's tables) and a second run into the same store.

    .venv/bin/python -m bench.bench_eval [--suite localgovfaq-dev] [--examples 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "LITELLM_LOCAL_MODEL_COST_MAP": "True", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "RAGAS_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

from assistant.respond import Responder  # noqa: E402
from assistant.settings import Settings  # noqa: E402
from eval.knowledge import build_knowledge_index  # noqa: E402
from eval.run import SuiteRun, compute_metrics, replay, run_params, suite_record, turn_for  # noqa: E402
from eval.suite import build_suite_dataset, load_suite, suite_knowledge  # noqa: E402
from eval.track import TrackingConfig, log_run  # noqa: E402
from index.cache import CachedEmbedder, EmbeddingCache  # noqa: E402
from index.embed import load_embedder  # noqa: E402


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", default="localgovfaq-dev")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    embedder = CachedEmbedder(load_embedder(settings.embedder, settings.cache_dir),
                              EmbeddingCache(settings.cache_dir / "embeddings.sqlite"))
    suite = load_suite(args.suite)
    dataset = build_suite_dataset(suite, sample=args.examples)
    index = build_knowledge_index(suite_knowledge(suite), embedder)
    responder = Responder.from_settings(settings, index)
    rows = dataset.dataset.to_list()
    turns = [turn_for(r, suite) for r in rows]
    for t in turns:  # warm-up: every query embedding now comes from the cache in both passes
        responder.respond(t)

    bare, evaluated = [], []
    run = None
    for _ in range(args.repeats):
        started = time.perf_counter()
        for t in turns:
            responder.respond(t)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        results = replay(responder, rows, suite, progress=False)
        results, metrics = compute_metrics(results, dataset, suite, index, time.perf_counter() - started)
        evaluated.append(time.perf_counter() - started)
        run = SuiteRun(suite, dataset, tuple(results), metrics,
                       run_params(suite, settings, responder, dataset), evaluated[-1])
    assert run is not None
    n = len(rows)
    print(f"suite {suite.name}, {n} examples, embedder {embedder.name}, best of {args.repeats}")
    print(f"bare turn:      {n / min(bare):7.1f} examples/s ({min(bare):.2f} s)")
    print(f"evaluation run: {n / min(evaluated):7.1f} examples/s ({min(evaluated):.2f} s)")
    print(f"overhead (evaluation time / bare time): {min(evaluated) / min(bare):.3f}x (target <= 1.2x)")

    record = suite_record(run)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrackingConfig.default(Path(tmp))
        for label in ("first run (creates the store)", "second run"):
            started = time.perf_counter()
            log_run(config, record)
            print(f"MLflow logging, {label}: {time.perf_counter() - started:.2f} s "
                  f"({len(record.table)} table rows, {len(record.figures)} plots)")


if __name__ == "__main__":
    main()

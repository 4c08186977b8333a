"""The cross-request query batcher, with the real default embedder behind it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from index.batching import BatchingClosedError, BatchingEmbedder, in_passing_thread
from index.embed import Embedder

QUERIES = [
    "SIMカードが届いたのに使えない",
    "料金プランを変更したい",
    "How do I cancel my contract?",
    "機種変更の手続きはどこでできますか",
    "海外で使えますか",
    "My phone shows no signal",
    "支払い方法をクレジットカードに変えたい",
    "パスワードを忘れました",
]


class _GatedEmbedder:
    """Blocks its first call until released, so the test knows a crowd has queued behind it."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[int] = []

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.entered.set()
        self.release.wait(30)
        return self.inner.embed_queries(texts)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_documents(texts)


class _BrokenEmbedder:
    name, dim = "broken", 384

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        raise OSError("model file vanished")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        raise OSError("model file vanished")


def test_concurrent_callers_share_model_calls_and_get_their_own_rows(embedder: Embedder) -> None:
    gated = _GatedEmbedder(embedder)
    batching = BatchingEmbedder(gated, max_batch=64)
    try:
        with ThreadPoolExecutor(len(QUERIES)) as pool:
            first = pool.submit(batching.embed_queries, [QUERIES[0]])
            assert gated.entered.wait(30)
            rest = [pool.submit(batching.embed_queries, [q]) for q in QUERIES[1:]]
            while batching._queue.qsize() < len(rest):  # all queued behind the blocked call
                threading.Event().wait(0.01)
            gated.release.set()
            got = np.vstack([first.result(30)] + [f.result(30) for f in rest])
    finally:
        batching.close()
    alone = np.vstack([embedder.embed_queries([q]) for q in QUERIES])
    # Each caller gets the vector of its own text (padding in a batch moves only the last digits).
    cosine = np.sum(got * alone, axis=1)
    assert cosine.min() > 0.9999, cosine
    assert gated.calls == [1, len(QUERIES) - 1]
    assert batching.stats.calls == 2 and batching.stats.largest == len(QUERIES) - 1


def test_max_batch_splits_a_crowd(embedder: Embedder) -> None:
    gated = _GatedEmbedder(embedder)
    batching = BatchingEmbedder(gated, max_batch=3)
    try:
        with ThreadPoolExecutor(len(QUERIES)) as pool:
            first = pool.submit(batching.embed_queries, [QUERIES[0]])
            assert gated.entered.wait(30)
            rest = [pool.submit(batching.embed_queries, [q]) for q in QUERIES[1:]]
            while batching._queue.qsize() < len(rest):
                threading.Event().wait(0.01)
            gated.release.set()
            shapes = [first.result(30).shape] + [f.result(30).shape for f in rest]
    finally:
        batching.close()
    assert shapes == [(1, 384)] * len(QUERIES)
    assert max(gated.calls) <= 3 and sum(gated.calls) == len(QUERIES)


def test_multi_text_calls_and_empty_calls(embedder: Embedder) -> None:
    batching = BatchingEmbedder(embedder)
    try:
        vectors = batching.embed_queries(QUERIES[:3])
        assert vectors.shape == (3, 384) and vectors.dtype == np.float32
        assert np.sum(vectors * embedder.embed_queries(QUERIES[:3]), axis=1).min() > 0.9999
        assert batching.embed_queries([]).shape == (0, 384)
        assert batching.embed_documents(["passage"]).shape == (1, 384)
        assert (batching.name, batching.dim) == (embedder.name, embedder.dim)
    finally:
        batching.close()


def test_a_failing_model_fails_its_callers_and_the_worker_survives() -> None:
    batching = BatchingEmbedder(_BrokenEmbedder())
    try:
        for _ in range(2):  # the worker is still there for the second call
            with pytest.raises(OSError, match="vanished"):
                batching.embed_queries(["anything"])
    finally:
        batching.close()


def test_closed_batcher_refuses_politely(embedder: Embedder) -> None:
    batching = BatchingEmbedder(embedder)
    batching.close()
    batching.close()  # idempotent
    with pytest.raises(BatchingClosedError):
        batching.embed_queries(["late"])


def test_max_batch_must_be_positive(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchingEmbedder(embedder, max_batch=0)


def test_in_passing_thread_returns_the_result_or_raises_the_error() -> None:
    caller = threading.current_thread()
    ran_on: list[threading.Thread] = []

    def work(a: int, *, b: int) -> int:
        ran_on.append(threading.current_thread())
        return a + b

    assert in_passing_thread(work, 2, b=3) == 5
    assert ran_on[0] is not caller and not ran_on[0].is_alive()  # its own thread, ended already

    def fails() -> None:
        raise KeyError("no such model")

    with pytest.raises(KeyError, match="no such model"):
        in_passing_thread(fails)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
def test_torch_work_in_a_passing_thread_leaves_no_thread_pool_behind() -> None:
    import torch

    def tasks() -> set[str]:
        return set(os.listdir("/proc/self/task"))

    def parallel_work() -> set[str]:
        torch.set_num_threads(2)
        torch.ones(1 << 20).add_(1)  # big enough for torch to split it: OpenMP starts a pool
        return tasks()

    in_passing_thread(parallel_work)  # torch starts a helper thread of its own, once per process
    before = tasks()
    new = in_passing_thread(parallel_work) - before
    if "OpenMP" in torch.__config__.parallel_info():
        assert len(new) >= 2  # the passing thread and its pool's worker
    deadline = time.monotonic() + 30
    while new & tasks() and time.monotonic() < deadline:  # the pool's workers exit just after
        time.sleep(0.05)
    assert not new & tasks()

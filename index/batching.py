"""Batch query embeddings across concurrent callers: one model call for many requests.

An API replica answers many customers at once, each turn embedding one short query. Calling the
model once per request from many threads makes them fight over the same cores; one call over all
waiting queries costs little more than a single one. ``BatchingEmbedder`` wraps any ``Embedder``:
``embed_queries`` from any thread enqueues its texts and waits; one worker thread takes everything
waiting (up to ``max_batch`` texts), embeds it in one call and hands each caller its rows.

No artificial delay is added: while the worker embeds one batch, the next one gathers by itself, so
a lone caller pays only a thread hand-off and a crowd is batched as deep as the load makes it.
``before_batch(size)``, when given, runs on the worker just before each model call, and
``after_batch(size, seconds)`` just after a successful one with its duration: the server uses them to
choose a lone query's torch threads and a crowd's batch's (the other turns' Python work needs a core
meanwhile); see ``assistant.api.app.TorchThreads``.
``embed_documents`` (index building) is passed straight through.

The worker should be the only long-lived thread that runs torch in parallel. torch's OpenMP runtime
(libgomp) keeps a pool of threads for every thread that has run a parallel region, and once a process
holds more such threads than it has cores, libgomp stops spinning between regions (100 spins instead
of 300,000: libgomp's manual, ``GOMP_SPINCOUNT``): each of the model's many short regions then waits
on a futex wake. Measured with the demo model on 2 cores (bf16,
AMX): a lone query on the worker with 2 threads took 24-25 ms after the main thread had loaded the
model, and 11-13 ms after the model was loaded in a thread that had ended. So a server loads
models and builds indexes through ``in_passing_thread``, whose pool goes away when it returns.

Errors: an exception raised by the wrapped embedder is re-raised in every caller of that batch;
``BatchingClosedError`` after ``close()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import numpy as np

from index.embed import Embedder

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def in_passing_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a new thread that has ended by the time its result (or error) is back.

    For torch work outside the query batcher's worker (loading a model, building an index): the
    OpenMP thread pool it creates ends with the thread, instead of slowing the worker's for the life of
    the process (see the module docstring).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="passing") as pool:
        return pool.submit(fn, *args, **kwargs).result()


class BatchingClosedError(RuntimeError):
    """The batching embedder was closed; no more queries are embedded."""


@dataclass
class _Request:
    texts: tuple[str, ...]
    future: Future[np.ndarray] = field(default_factory=Future)


@dataclass(frozen=True)
class BatchStats:
    """How the worker has batched so far (for logs and the benchmark)."""

    calls: int
    texts: int
    largest: int

    @property
    def mean_batch(self) -> float:
        """Average texts per model call."""
        return self.texts / self.calls if self.calls else 0.0


class BatchingEmbedder:
    """An ``Embedder`` that merges concurrent ``embed_queries`` calls into one model call."""

    def __init__(
        self,
        inner: Embedder,
        max_batch: int = 64,
        before_batch: Callable[[int], None] | None = None,
        after_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.max_batch = max_batch
        self._before_batch = before_batch
        self._after_batch = after_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._calls = self._texts = self._largest = 0
        self._worker = threading.Thread(target=self._run, name="query-embedding-batcher", daemon=True)
        self._worker.start()

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as queries, batched with whatever other threads are asking right now."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        request = _Request(tuple(texts))
        with self._lock:
            if self._closed:
                raise BatchingClosedError("the batching embedder is closed")
            self._queue.put(request)
        return request.future.result()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Documents are embedded in bulk already: passed straight to the wrapped embedder."""
        return self.inner.embed_documents(texts)

    @property
    def stats(self) -> BatchStats:
        """Model calls and texts embedded so far."""
        return BatchStats(self._calls, self._texts, self._largest)

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._worker.join()
        stats = self.stats
        log.info("query batcher stopped: %d texts in %d model calls (mean batch %.1f, largest %d)",
                 stats.texts, stats.calls, stats.mean_batch, stats.largest)

    def _run(self) -> None:
        pending: _Request | None = None
        while True:
            first = pending if pending is not None else self._queue.get()
            pending = None
            if first is None:
                return
            batch = [first]
            size = len(first.texts)
            stop = False
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if size + len(nxt.texts) > self.max_batch:
                    pending = nxt  # starts the next batch
                    break
                batch.append(nxt)
                size += len(nxt.texts)
            self._embed(batch, size)
            if stop:
                self._drain_closed()
                return

    def _embed(self, batch: list[_Request], size: int) -> None:
        texts = [t for request in batch for t in request.texts]
        try:
            if self._before_batch is not None:
                self._before_batch(size)
            start = time.perf_counter()
            vectors = self.inner.embed_queries(texts)
            if self._after_batch is not None:
                self._after_batch(size, time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 -- a thread boundary: every waiting caller gets it
            for request in batch:
                request.future.set_exception(exc)
            return
        self._calls += 1
        self._texts += size
        self._largest = max(self._largest, size)
        start = 0
        for request in batch:
            end = start + len(request.texts)
            request.future.set_result(vectors[start:end])
            start = end

    def _drain_closed(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.future.set_exception(BatchingClosedError("the batching embedder is closed"))

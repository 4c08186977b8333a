"""Run a torch embedder in a process of its own, so a busy server's Python threads cannot slow it.

torch releases the GIL inside each operation, but takes it back between operations: a model's forward
pass is hundreds of short operations with a little Python between each. In a server whose request
threads keep the GIL busy (HTTP, SQL, the responder), the model thread waits for it before nearly
every operation. Measured with the demo model on 2 cores (bf16, AMD EPYC): one torch thread embedding
20 queries took 89 ms alone and 155 ms beside eight Python threads that each hold the GIL for ~50 us
every 0.5 ms (its CPU time over wall time 1.00 -> 0.65); in the API at 64 customers the batcher's
worker was embedding all the time yet on a core only 60% of it. In its own process the model has its
own GIL.

``ProcessEmbedder(factory, *args, **kwargs)`` starts a child process that builds the embedder with
``factory(*args, **kwargs)`` (picklable: a class or module-level function and plain arguments), then
answers requests over a socket pair: texts in, an fp32 array out. The child is a fresh interpreter
(``python -m index.procembed``), never a fork of a process that holds torch's thread pools and our
locks, and unlike multiprocessing's ``spawn`` it does not import the caller's ``__main__`` again (a
script without a ``__name__`` guard would start a second server); it gets the parent's ``sys.path``
and environment. POSIX only (it inherits a file descriptor).
Before it says it is ready, the child runs the model on every short query length on each thread count
the server chooses between (an embedder's ``warm_up``): measured cold, two threads looked slower than
one (20-27 vs 18 ms) and every server chose one, which costs ~4 ms a lone query once warm (11.5 vs
15.9 ms) until its probes turned the choice, hundreds of queries later.
``set_threads(n)`` sets the child's torch threads for the next request (``assistant.api.app
.TorchThreads`` chooses them). Calls from several threads take turns: the query batcher's worker is
the one caller that matters.

Errors: ``EmbedderProcessError`` when the child cannot start (its error is in the message), when an
embedding fails in the child (its exception's type and text), when the child died (its exit code) or
did not answer within ``request_timeout`` (then it is stopped). After a death or a hang the next call
starts a new child, so one crash costs the batch it was embedding, not the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from index.embed import Embedder

log = logging.getLogger(__name__)
START_TIMEOUT = 600.0  # seconds: loading may convert the default model on first use
# Seconds one request may take before the child is taken for hung, stopped and replaced: a batch of
# 64 short queries takes ~0.2 s here, a bulk of documents a few seconds per thousand.
REQUEST_TIMEOUT = 300.0


class EmbedderProcessError(RuntimeError):
    """The embedding process could not start, failed a request, or died."""


def _serve(conn: Connection, factory: Callable[..., Embedder], args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> None:
    """The child: build the embedder, then embed what arrives until the socket closes or says stop."""
    try:
        embedder = factory(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    warm_up = getattr(embedder, "warm_up", None)
    if callable(warm_up):  # every short query's length, on one thread and on every core
        try:
            warm_up(threads=sorted({1, os.cpu_count() or 1}))
        except Exception as exc:  # noqa: BLE001 -- only slower first queries; the real ones report errors
            log.warning("warming up the embedding model failed: %s: %s", type(exc).__name__, exc)
    conn.send(("ready", embedder.name, embedder.dim))
    threads: int | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            return
        kind, texts, wanted = message
        try:
            if wanted is not None and wanted != threads:
                import torch

                torch.set_num_threads(wanted)
                threads = wanted
            embed = embedder.embed_queries if kind == "query" else embedder.embed_documents
            reply: tuple[str, Any] = ("ok", np.ascontiguousarray(embed(texts), dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 -- the parent raises it for this request only
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class ProcessEmbedder:
    """An ``Embedder`` whose model runs in a child process (see the module docstring)."""

    def __init__(
        self, factory: Callable[..., Embedder], *args: Any, start_timeout: float = START_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT, **kwargs: Any,
    ) -> None:
        self._target = (factory, args, kwargs)
        self._start_timeout = start_timeout
        self._request_timeout = request_timeout
        self._lock = threading.Lock()
        self._threads: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._closed = False
        self.name, self.dim = self._start()

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none runs)."""
        return self._process.pid if self._process is not None else None

    def set_threads(self, threads: int) -> None:
        """The child's torch threads from the next request on."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self._threads = threads

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries in the child."""
        return self._call("query", texts)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages in the child."""
        return self._call("document", texts)

    def close(self) -> None:
        """Ask the child to stop; after a few seconds, stop it."""
        with self._lock:
            self._closed = True
            self._stop()

    def _call(self, kind: str, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_* takes a sequence of texts, not a single str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            if self._closed:
                raise EmbedderProcessError("the embedding process was closed")
            if self._conn is None:
                name, _ = self._start()  # the last child died: a new one
                if name != self.name:
                    raise EmbedderProcessError(
                        f"the restarted embedding process loaded {name}, not {self.name}"
                    )
            assert self._conn is not None
            try:
                self._conn.send((kind, list(texts), self._threads))
                if not self._conn.poll(self._request_timeout):
                    self._stop(wait=0)
                    raise EmbedderProcessError(
                        f"the embedding process did not answer in {self._request_timeout:g} s; it was "
                        "stopped and the next call starts a new one"
                    )
                status, payload = self._conn.recv()
            except (EOFError, OSError) as exc:
                code = self._reap()
                raise EmbedderProcessError(
                    f"the embedding process died (exit code {code}) while embedding {len(texts)} texts; "
                    "the next call starts a new one"
                ) from exc
        if status != "ok":
            raise EmbedderProcessError(
                f"embedding {len(texts)} texts failed in the embedding process: {payload}"
            )
        return payload  # type: ignore[no-any-return]

    def _start(self) -> tuple[str, int]:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "index.procembed", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            theirs.close()
            raise EmbedderProcessError(f"the embedding process could not be started: {exc}") from exc
        theirs.close()  # only the child holds its end: its death shows here as end of file
        parent = Connection(ours.detach())
        self._process, self._conn = process, parent
        try:
            parent.send(list(sys.path))  # first, so that the factory's module imports in the child
            parent.send(self._target)
            if not parent.poll(self._start_timeout):
                raise EmbedderProcessError(
                    f"the embedding process did not start in {self._start_timeout:g} s"
                )
            message = parent.recv()
        except (EOFError, OSError) as exc:
            code = self._reap()
            raise EmbedderProcessError(
                f"the embedding process exited while starting (exit code {code})"
            ) from exc
        except EmbedderProcessError:
            self._stop()
            raise
        if message[0] != "ready":
            self._stop()
            raise EmbedderProcessError(f"the embedding process could not load the model: {message[1]}")
        log.info("embedding process %d serving %s", process.pid, message[1])
        return str(message[1]), int(message[2])

    def _reap(self, wait: float = 5) -> int | None:
        """Forget a dead (or dying) child, killing it after ``wait`` seconds; its exit code."""
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return None
        try:
            return process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(5)

    def _stop(self, wait: float = 5) -> None:
        if self._conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(None)
        self._reap(wait)


def _main(argv: list[str]) -> None:
    """``python -m index.procembed FD``: serve on the inherited socket ``FD`` (``ProcessEmbedder``)."""
    # Ctrl-C reaches the whole process group: the server shuts down and closes the socket, which ends
    # the child's loop; the child does not die mid-request on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    try:
        sys.path[:] = conn.recv()
        factory, args, kwargs = conn.recv()
    except (EOFError, OSError):
        return
    except Exception as exc:  # noqa: BLE001 -- e.g. the factory's module does not import here
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    _serve(conn, factory, args, kwargs)


if __name__ == "__main__":
    _main(sys.argv)

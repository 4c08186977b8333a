"""The embedder in a process of its own: the same vectors, its errors, a crash and a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.embed import SentenceTransformerEmbedder
from index.procembed import EmbedderProcessError, ProcessEmbedder
from tests.conftest import REPO

QUESTIONS = ["料金プランを変更したい", "How do I reset my password?", "SIMが届かない"]


class _Picky:
    """An embedder for the protocol's error paths (built in the child): refuses "boom", hangs on "hang"."""

    def __init__(self, dim: int) -> None:
        self.name, self.dim = f"picky-{dim}", dim

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        if "boom" in texts:
            raise ValueError("cannot embed 'boom'")
        if "hang" in texts:
            time.sleep(60)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 0] = 1.0
        return out

    embed_documents = embed_queries


class _Threads:
    """An embedder (built in the child) whose vectors are the torch thread count it ran on."""

    name, dim = "threads", 1

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        return np.full((len(texts), 1), torch.get_num_threads(), dtype=np.float32)

    embed_documents = embed_queries


def _refuse_to_load(path: str) -> Any:
    raise FileNotFoundError(f"no model at {path}")


@pytest.fixture(scope="module")
def in_child(embedder: Any) -> Any:
    args, kwargs = embedder.init_args
    process = ProcessEmbedder(SentenceTransformerEmbedder, *args, **kwargs)
    yield process
    process.close()


def test_the_child_embeds_exactly_what_the_model_embeds_in_process(embedder: Any, in_child: Any) -> None:
    assert (in_child.name, in_child.dim) == (embedder.name, embedder.dim)
    assert in_child.pid is not None and in_child.pid != os.getpid()
    queries, documents = in_child.embed_queries(QUESTIONS), in_child.embed_documents(QUESTIONS)
    assert queries.dtype == np.float32 and queries.shape == (3, embedder.dim)
    np.testing.assert_allclose(queries, embedder.embed_queries(QUESTIONS), atol=1e-6)
    np.testing.assert_allclose(documents, embedder.embed_documents(QUESTIONS), atol=1e-6)
    assert not np.allclose(queries, documents)  # the query and document prefixes reached the child
    in_child.set_threads(1)  # the child's torch threads follow, and the vectors stay the same
    np.testing.assert_allclose(in_child.embed_queries(QUESTIONS), queries, atol=1e-2)
    assert in_child.embed_queries([]).shape == (0, embedder.dim)
    with pytest.raises(TypeError, match="not a single str"):
        in_child.embed_queries("料金")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        in_child.set_threads(0)


def test_set_threads_reaches_the_child_s_torch() -> None:
    reporter = ProcessEmbedder(_Threads)
    try:
        counts = []
        for threads in (2, 1, 2):
            reporter.set_threads(threads)
            counts.append(int(reporter.embed_queries(["a"])[0, 0]))
        assert counts == [2, 1, 2]
    finally:
        reporter.close()


def test_a_failed_request_raises_its_error_and_the_child_keeps_serving() -> None:
    picky = ProcessEmbedder(_Picky, 4)
    try:
        failed = r"embedding 2 texts failed .*ValueError: cannot embed 'boom'"
        with pytest.raises(EmbedderProcessError, match=failed):
            picky.embed_queries(["ok", "boom"])
        pid = picky.pid
        assert picky.embed_documents(["ok"]).tolist() == [[1.0, 0.0, 0.0, 0.0]]
        assert picky.pid == pid  # the same child
    finally:
        picky.close()


def test_a_child_that_dies_fails_its_request_and_the_next_call_starts_a_new_one() -> None:
    picky = ProcessEmbedder(_Picky, 4)
    try:
        first = picky.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        died = r"died \(exit code -9\).*the next call starts a new one"
        with pytest.raises(EmbedderProcessError, match=died):
            picky.embed_queries(["ok"])
        assert picky.embed_queries(["ok"]).shape == (1, 4)
        assert picky.pid not in (None, first)
    finally:
        picky.close()
    assert picky.pid is None
    with pytest.raises(EmbedderProcessError, match="was closed"):
        picky.embed_queries(["ok"])


def test_a_child_that_does_not_answer_in_time_is_stopped_and_replaced() -> None:
    picky = ProcessEmbedder(_Picky, 4, request_timeout=1.0)
    try:
        first = picky.pid
        start = time.monotonic()
        with pytest.raises(EmbedderProcessError, match=r"did not answer in 1 s; it was stopped"):
            picky.embed_queries(["hang"])
        assert time.monotonic() - start < 20  # not the minute the child would have slept
        assert picky.pid is None
        assert picky.embed_queries(["ok"]).shape == (1, 4)
        assert picky.pid not in (None, first)
    finally:
        picky.close()


def test_a_model_that_cannot_load_is_reported_with_the_child_s_error(tmp_path: Path) -> None:
    unloadable = r"could not load the model: FileNotFoundError: no model at"
    with pytest.raises(EmbedderProcessError, match=unloadable):
        ProcessEmbedder(_refuse_to_load, str(tmp_path / "missing"))


def test_a_script_without_a_main_guard_is_not_run_again_in_the_child(tmp_path: Path) -> None:
    script = tmp_path / "embed_once.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from index.procembed import ProcessEmbedder\n"
        "from tests.index.test_procembed import _Picky\n"
        "print('started', flush=True)\n"  # twice if the child ran this file again
        "embedder = ProcessEmbedder(_Picky, 3)\n"
        "print(embedder.embed_queries(['a']).shape, flush=True)\n"
        "embedder.close()\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["started", "(1, 3)"]

"""``madoguchi serve`` and the composition root's own wiring: real processes, real files, no injection."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from assistant.api.app import create_app, serving_embedder
from assistant.db import upgrade
from assistant.serve import ensure_index
from assistant.settings import Settings
from index.batching import in_passing_thread
from index.store import current_generation
from tests.assistant.seams import free_port
from tests.conftest import REPO, SMALL_KB, model_cache_dir


def test_ensure_index_builds_once_from_the_configured_sources(tmp_path: Path, embedder: Any) -> None:
    settings = Settings(home=tmp_path, kb_sources=[SMALL_KB])
    ensure_index(settings, embedder)
    first = current_generation(settings.index_dir)
    ensure_index(settings, embedder)  # present: left alone
    assert current_generation(settings.index_dir) == first


def test_serve_shortens_openmp_spinning_before_torch_loads_unless_the_user_chose() -> None:
    probe = (
        "import os, sys\n"
        "if sys.argv[1] == 'torch-first': import torch\n"
        "from assistant.serve import quiet_openmp_spin\n"
        "for name, value in [(None, None), ('GOMP_SPINCOUNT', '5'), ('OMP_WAIT_POLICY', 'passive')]:\n"
        "    os.environ.pop('GOMP_SPINCOUNT', None); os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "    if name: os.environ[name] = value\n"
        "    print(quiet_openmp_spin(), os.environ.get('GOMP_SPINCOUNT'))\n"
    )

    def run(case: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", probe, case], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stdout.strip().splitlines()

    # Set when nobody chose; the user's spin count or wait policy wins.
    assert run("fresh") == ["True 30000", "False 5", "False None"]
    # Once torch (and libgomp) has loaded, libgomp has read its settings: too late, nothing is set.
    assert run("torch-first") == ["False None", "False 5", "False None"]


def test_create_app_builds_its_services_from_settings(tmp_path: Path, index_dir: Path) -> None:
    settings = Settings(home=tmp_path, index_dir=index_dir, cache_dir=model_cache_dir())
    upgrade(settings)
    with TestClient(create_app(settings)) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["index_chunks"] and health["index_chunks"] > 0
        page = client.get("/")
        assert 'content="mdg_c_' in page.text  # the first start created the publishable widget key


def test_madoguchi_serve_answers_from_a_fresh_home_and_follows_index_changes(tmp_path: Path) -> None:
    port = free_port()
    kb = tmp_path / "kb"
    shutil.copytree(SMALL_KB, kb)
    env = os.environ | {
        "MADOGUCHI_HOME": str(tmp_path / "home"),
        "MADOGUCHI_PORT": str(port),
        "MADOGUCHI_KB_SOURCES": f'["{kb}"]',
        "MADOGUCHI_CACHE_DIR": str(model_cache_dir()),
        "MADOGUCHI_API__INDEX_RELOAD_SECONDS": "0.5",
    }
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", "serve"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_healthy(base, process, log)
        page = httpx.get(f"{base}/").text
        widget_key = page.split('name="madoguchi-key" content="')[1].split('"')[0]
        headers = {"Authorization": f"Bearer {widget_key}"}
        cid = httpx.post(f"{base}/v1/conversations", json={"locale": "ja"}, headers=headers).json()["id"]
        turn = httpx.post(
            f"{base}/v1/conversations/{cid}/messages", json={"text": "開通のやり方を教えて"}, headers=headers
        ).json()
        assert turn["reply"]["decision"] == "answer"
        assert turn["reply"]["citations"][0]["source_id"] == "sim-activation"
        assert "created the first admin API key" in log.read_text()
        # A new entry, indexed by another process: the running server answers from it, no restart.
        serving = httpx.get(f"{base}/healthz").json()["index_generation"]
        (kb / "faq_roaming.yaml").write_text(_ROAMING, encoding="utf-8")
        subprocess.run([sys.executable, "-m", "assistant.cli", "index", "build"], cwd=REPO, env=env,
                       check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/healthz").json()["index_generation"] == serving:
            assert time.monotonic() < deadline, f"the server kept {serving}:\n{log.read_text()}"
            time.sleep(0.2)
        roaming = httpx.post(
            f"{base}/v1/conversations/{cid}/messages", json={"text": "海外ローミングの料金はいくらですか"},
            headers=headers,
        ).json()
        assert roaming["reply"]["citations"][0]["source_id"] == "roaming-fee", roaming
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_ROAMING = """- id: roaming-fee
  question: 海外ローミングの料金はいくらですか？
  answer: 海外ローミングは1日980円の定額で、データ通信が使い放題になります。
  variations: [海外で使うといくら, ローミング料金]
  category: 料金
  updated_at: 2026-11-01
"""


def _wait_until_healthy(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240  # first start: migrate, load the model, build the index
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"madoguchi serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"madoguchi serve did not become healthy:\n{log.read_text()}")


class _ThreadRecorder:
    """Records torch's thread count each time the batcher's worker calls the model."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.seen: list[tuple[int, int]] = []  # (texts, torch threads)
        self.entered, self.release = threading.Event(), threading.Event()

    def embed_queries(self, texts: Any) -> Any:
        import torch

        self.seen.append((len(texts), torch.get_num_threads()))
        self.entered.set()
        self.release.wait(30)
        return self.inner.embed_queries(texts)

    def embed_documents(self, texts: Any) -> Any:
        return self.inner.embed_documents(texts)


def test_a_lone_query_gets_every_core_and_a_crowd_one_thread(tmp_path: Path, embedder: Any) -> None:
    import torch

    settings = Settings(home=tmp_path, api={"inference_threads": 1, "lone_query_threads": 2})
    recorder = _ThreadRecorder(embedder)
    served, close = serving_embedder(settings, recorder)
    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(served.embed_queries, ["料金プランを変更したい"])
            assert recorder.entered.wait(30)
            questions = ("解約したい", "SIMが届かない", "返金は？")
            crowd = [pool.submit(served.embed_queries, [q]) for q in questions]
            while served._queue.qsize() < len(crowd):  # type: ignore[attr-defined]
                time.sleep(0.01)
            recorder.release.set()
            assert all(f.result(30).shape == (1, 384) for f in [first, *crowd])
    finally:
        assert close is not None
        close()
    assert recorder.seen == [(1, 2), (3, 1)]
    assert torch.get_num_threads() == before  # only the worker thread's team changed


def test_lone_query_threads_are_measured_and_the_faster_count_wins() -> None:
    import torch

    from assistant.api.app import TorchThreads

    def run(one_thread_seconds: float, two_threads_seconds: float) -> tuple[list[int], int | None]:
        policy = TorchThreads(crowd=1, lone=0, cores=2, trials=3)
        used = []
        for _ in range(8):
            policy.before_batch(1)
            threads = torch.get_num_threads()
            used.append(threads)
            policy.after_batch(1, one_thread_seconds if threads == 1 else two_threads_seconds)
        policy.before_batch(4)  # a crowd's batch: its own setting, nothing measured
        assert torch.get_num_threads() == 1
        policy.after_batch(4, 99.0)
        return used, policy.lone

    # Both candidates alternate until each has its trials, then the faster one stays.
    assert in_passing_thread(run, 0.020, 0.030) == ([2, 1, 2, 1, 2, 1, 1, 1], 1)
    assert in_passing_thread(run, 0.030, 0.020) == ([2, 1, 2, 1, 2, 1, 2, 2], 2)


def test_lone_query_threads_keep_being_probed_and_the_choice_follows_the_timings() -> None:
    import torch

    from assistant.api.app import TorchThreads

    def run() -> tuple[list[int], list[int | None]]:
        policy = TorchThreads(crowd=1, lone=0, cores=2, trials=2, probe_every=4, window=4)
        used, chosen = [], []
        for n in range(30):
            policy.before_batch(1)
            threads = torch.get_num_threads()
            used.append(threads)
            # One thread is faster at first (a cold start); from the 10th query on, two threads are.
            fast = 1 if n < 10 else 2
            policy.after_batch(1, 0.010 if threads == fast else 0.030)
            chosen.append(policy.lone)
        return used, chosen

    used, chosen = in_passing_thread(run)  # torch threads belong to the calling thread
    assert used[:4] == [2, 1, 2, 1] and chosen[3] == 1  # the trials: one thread wins
    assert used[4:8] == [1, 1, 1, 2]  # every 4th lone query probes the other count
    # Now one thread is slow and the probes of two come back fast: once the recent medians say so,
    # two threads it is, and one thread becomes the probe.
    switched = chosen.index(2)
    assert 10 <= switched < 26
    assert set(chosen[switched:]) == {2} and used[switched + 1 : switched + 4] == [2, 2, 2]
    assert used[switched + 1 :].count(1) == len(used[switched + 1 :]) // 4


def test_torch_threads_refuses_a_window_smaller_than_its_trials() -> None:
    from assistant.api.app import TorchThreads

    with pytest.raises(ValueError, match="window >= trials"):
        TorchThreads(crowd=1, lone=0, cores=2, trials=8, window=4)


def test_a_configured_lone_thread_count_is_not_measured() -> None:
    from assistant.api.app import TorchThreads

    policy = TorchThreads(crowd=0, lone=2, cores=4)
    assert (policy.lone, policy.crowd) == (2, 4)
    assert TorchThreads(crowd=1, lone=0, cores=1).lone == 1  # one core: nothing to choose


def test_the_server_measures_lone_queries_on_the_real_model(
    tmp_path: Path, embedder: Any, caplog: Any
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: there is no thread count to choose")
    served, close = serving_embedder(Settings(home=tmp_path), embedder)  # lone_query_threads 0: measured
    questions = ("料金プランを変更したい", "SIMが届かない", "解約したい", "返金は？", "機種変更")
    try:
        with caplog.at_level("INFO", logger="assistant.api.app"):
            for n in range(16):  # 8 trials of each candidate
                assert served.embed_queries([questions[n % len(questions)]]).shape == (1, 384)
    finally:
        assert close is not None
        close()
    chosen = [r.getMessage() for r in caplog.records if "a lone query embeds on" in r.getMessage()]
    assert len(chosen) == 1 and chosen[0].split()[5] in ("1", "2")  # "a lone query embeds on N torch..."


def test_a_server_embeds_queries_in_the_model_s_own_process_and_survives_its_crash(
    tmp_path: Path, embedder: Any
) -> None:
    from index.procembed import EmbedderProcessError, ProcessEmbedder

    served, close = serving_embedder(Settings(home=tmp_path), embedder)  # model_process: on by default
    assert close is not None
    try:
        inner = served.inner  # type: ignore[attr-defined]
        assert isinstance(inner, ProcessEmbedder) and inner.name == embedder.name
        question = ["料金プランを変更したい"]
        np_expected = embedder.embed_queries(question)
        assert abs(float((served.embed_queries(question) * np_expected).sum()) - 1.0) < 1e-3
        child = inner.pid
        assert child is not None
        os.kill(child, signal.SIGKILL)
        with pytest.raises(EmbedderProcessError, match="died"):  # the batch it was given fails...
            served.embed_queries(question)
        assert served.embed_queries(question).shape == (1, 384)  # ...and the next one has a new child
        assert inner.pid not in (None, child)
    finally:
        close()
    assert inner.pid is None  # closing the server's embedder stops the child


def test_the_model_process_can_be_turned_off(tmp_path: Path, embedder: Any) -> None:
    served, close = serving_embedder(Settings(home=tmp_path, api={"model_process": False}), embedder)
    assert close is not None
    try:
        assert served.inner is embedder  # type: ignore[attr-defined]
    finally:
        close()


def test_the_startup_heap_is_frozen_out_of_later_garbage_collections() -> None:
    probe = (
        "import gc\n"
        "from assistant.serve import freeze_startup_heap\n"
        "before = gc.get_freeze_count()\n"
        "frozen = freeze_startup_heap()\n"
        "young = [[i] for i in range(1000)]\n"  # made later: left to the collector as usual
        "tracked = any(o is young for o in gc.get_objects())\n"
        "print(before, frozen > 10_000, frozen == gc.get_freeze_count(), tracked)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["0", "True", "True", "True"]


def test_a_model_process_that_cannot_start_leaves_the_model_in_the_server(
    tmp_path: Path, embedder: Any, caplog: Any
) -> None:
    from index.embed import SentenceTransformerEmbedder

    # The same model through links that vanish once it is loaded: the child finds nothing to load.
    model = Path(embedder.init_args[0][0])
    linked = tmp_path / "model"
    shutil.copytree(model, linked, copy_function=os.symlink)
    here = SentenceTransformerEmbedder(linked)
    shutil.rmtree(linked)
    with caplog.at_level("WARNING", logger="assistant.api.app"):
        served, close = serving_embedder(Settings(home=tmp_path), here)
    assert close is not None
    try:
        assert served.inner is here  # type: ignore[attr-defined]
        assert served.embed_queries(["料金プランを変更したい"]).shape == (1, 384)
    finally:
        close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("runs in the server's process: its own process failed" in w for w in warned), warned

"""``voc nightly``: one idempotent run of the daily loop under a lock that lets one run of two work; the
daily schedule. A tiny model built in-process, a real index, real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from datetime import time as daytime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from assistant.active_model import load_configured_embedder
from assistant.db import Database
from assistant.keys import issue_key
from assistant.settings import Settings
from assistant.transcripts import BotReply, NewConversation, add_bot_reply, add_message, open_conversation
from assistant.voc.joblock import job_lock
from assistant.voc.review import link_item, list_items
from eval.nightly import LOCK_NAME, next_run, run_daily, run_nightly
from index.build import build_index
from index.store import current_generation, read_sources
from tests.index.test_embed import build_tiny_model

FAQ = """\
- {id: e1, question: cat dog, answer: red mat}
- {id: e2, question: sat ran, answer: fast blue}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def settings(tmp_path: Path, tiny: Path, database_url: str) -> Settings:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(FAQ, encoding="utf-8")
    s = Settings(home=tmp_path / "home", kb_sources=[kb], embedder=str(tiny), cache_dir=tmp_path / "cache",
                 database_url=database_url)  # fmt: skip
    build_index(s.index_dir, [kb], load_configured_embedder(s), root=kb)
    return s


def _failed_question(database: Database, text: str) -> None:
    with database.session() as session:
        key = issue_key(session, "customer", "site").info
        conversation = open_conversation(session, key, NewConversation())
        asked = add_message(session, conversation.id, "customer", text)
        add_bot_reply(session, conversation, asked, BotReply("…", "escalate", 0.1, ("low_confidence",)))


def test_nightly_learns_once_and_then_does_nothing(settings: Settings, database: Database) -> None:
    _failed_question(database, "the cat a dog")

    def embedder() -> Any:
        return load_configured_embedder(settings)

    first = run_nightly(settings, database, datetime.now(UTC), embedder)
    assert first.ran and first.review_queued == 1 and first.learned is None  # queued, not reviewed yet
    assert "fewer than 50" in first.finetune["skipped"]
    with database.session() as session:
        (item,) = list_items(session, "pending", 10)
        link_item(session, item.id, "e1", {"e1", "e2"}, None, datetime.now(UTC))

    second = run_nightly(settings, database, datetime.now(UTC), embedder)
    assert second.ran and second.review_queued == 0 and second.learned is not None
    assert second.learned["items"] == 1
    assert second.learned["generation"] == current_generation(settings.index_dir).name
    learned = (settings.kb_sources[0] / "learned_variations.jsonl").read_text(encoding="utf-8")
    assert "the cat a dog" in learned
    assert "e1" in read_sources(settings.index_dir)

    third = run_nightly(settings, database, datetime.now(UTC), embedder)
    assert (third.ran, third.review_queued, third.alerts, third.learned) == (True, 0, 0, None)
    assert current_generation(settings.index_dir).name == second.learned["generation"]


def test_of_two_concurrent_runs_one_does_the_work(settings: Settings, database: Database) -> None:
    _failed_question(database, "the cat a dog")
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def slow_embedder() -> Any:
        time.sleep(1.0)  # the run holding the lock is still going when the other one asks
        return load_configured_embedder(settings)

    def run() -> None:
        barrier.wait()
        results.append(run_nightly(settings, database, datetime.now(UTC), slow_embedder))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.ran for r in results) == [False, True]
    worker = next(r for r in results if r.ran)
    idle = next(r for r in results if not r.ran)
    assert worker.review_queued == 1 and idle.review_queued == 0 and "lock" in (idle.skipped or "")
    with job_lock(database, LOCK_NAME) as taken:  # released after the run
        assert taken


def test_the_nightly_command_prints_a_json_summary(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assistant.cli import app

    env = {
        "MADOGUCHI_HOME": settings.home,
        "MADOGUCHI_EMBEDDER": settings.embedder,
        "MADOGUCHI_CACHE_DIR": settings.cache_dir,
        "MADOGUCHI_DATABASE_URL": settings.database_url,
        "MADOGUCHI_KB_SOURCES": json.dumps([str(p) for p in settings.kb_sources]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    result = CliRunner().invoke(app, ["voc", "nightly", "--no-track"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ran"] is True and summary["review_queued"] == 0 and summary["learned"] is None


def test_the_schedule_runs_daily_at_the_local_time() -> None:
    tokyo_3am = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)  # 03:00 on the 25th in Tokyo
    assert next_run(tokyo_3am - timedelta(minutes=1), daytime(3, 0), "Asia/Tokyo") == tokyo_3am
    assert next_run(tokyo_3am, daytime(3, 0), "Asia/Tokyo") == tokyo_3am + timedelta(days=1)

    now = [tokyo_3am - timedelta(hours=2)]
    ran: list[datetime] = []

    def sleep(seconds: float) -> None:
        now[0] += timedelta(seconds=seconds)

    def job() -> None:
        ran.append(now[0])
        if len(ran) == 1:
            raise RuntimeError("a failing run does not stop the schedule")

    run_daily(daytime(3, 0), "Asia/Tokyo", job, lambda: now[0], sleep, runs=2)
    assert ran == [tokyo_3am, tokyo_3am + timedelta(days=1)]

"""A running server follows the index on disk: the real app (its own services and reloader, the real
default model), a real index in ``tmp_path`` updated incrementally while it serves."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from assistant.api.app import build_services, create_app, index_reloader
from assistant.db import Database, upgrade
from assistant.keys import issue_key
from assistant.reload import LiveResponder
from assistant.respond import Reply, TurnInput
from assistant.settings import ApiSettings, Settings
from index.build import add_documents, build_index
from index.store import current_generation, generation_manifest
from tests.conftest import SMALL_KB

POINTS_FAQ = """\
- id: points-expiry
  question: ソラポイントの有効期限はいつまでですか？
  answer: ソラポイントの有効期限は最後にポイントを獲得した日から12か月です。
  variations: [ポイントはいつ失効しますか]
  category: ポイント
"""
QUESTION = "ソラポイントの有効期限を知りたい"


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    """A copy of the small knowledge base that the test may change."""
    return Path(shutil.copytree(SMALL_KB, tmp_path / "kb"))


@contextmanager
def serving(settings: Settings, embedder: Any) -> Iterator[tuple[TestClient, dict[str, str], Any]]:
    """The app with services built as ``madoguchi serve`` builds them; a customer key's headers."""
    upgrade(settings)
    with Database.connect(settings.database_url).session() as session:
        secret = issue_key(session, "customer", "site").secret
    services = build_services(settings, embedder)
    try:
        with TestClient(create_app(settings, services)) as client:
            yield client, {"Authorization": f"Bearer {secret}"}, services
    finally:
        for close in services.closers:
            close()
        services.database.dispose()


def _ask(client: TestClient, headers: dict[str, str], text: str) -> dict[str, Any]:
    cid = client.post("/v1/conversations", json={"locale": "ja"}, headers=headers).json()["id"]
    response = client.post(f"/v1/conversations/{cid}/messages", json={"text": text}, headers=headers)
    assert response.status_code in (200, 201), response.text
    return dict(response.json()["reply"])


def _sources(reply: dict[str, Any]) -> list[str]:
    return [c["source_id"] for c in reply["citations"]]


def _wait_for_generation(client: TestClient, name: str, seconds: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = client.get("/healthz").json()
        if health["index_generation"] == name:
            return dict(health)
        time.sleep(0.1)
    raise AssertionError(f"the server never loaded {name}: {client.get('/healthz').json()}")


def test_a_running_server_answers_from_a_new_generation_without_a_restart(
    tmp_path: Path, kb: Path, embedder: Any
) -> None:
    settings = Settings(home=tmp_path, kb_sources=[kb], api=ApiSettings(index_reload_seconds=0.2))
    build_index(settings.index_dir, [kb], embedder, root=kb)
    first = current_generation(settings.index_dir).name
    with serving(settings, embedder) as (client, headers, services):
        health = client.get("/healthz").json()
        assert health["index_generation"] == first and health["embedder"] == embedder.name
        assert "points-expiry" not in _sources(_ask(client, headers, QUESTION))

        (kb / "faq_points.yaml").write_text(POINTS_FAQ, encoding="utf-8")
        report = add_documents(settings.index_dir, [kb / "faq_points.yaml"], embedder, root=kb)
        assert report.added == ("points-expiry",) and report.generation is not None
        health = _wait_for_generation(client, report.generation.name)
        assert health["index_chunks"] == report.chunks

        reply = _ask(client, headers, QUESTION)
        assert reply["decision"] == "answer" and _sources(reply)[0] == "points-expiry"
        # the query batcher still embeds the turns after the swap
        assert services.responder.current.embedder.stats.calls >= 2


def test_a_turn_in_flight_finishes_on_the_index_it_started_with(
    tmp_path: Path, kb: Path, embedder: Any
) -> None:
    settings = Settings(home=tmp_path, kb_sources=[kb], api=ApiSettings(index_reload_seconds=0))
    build_index(settings.index_dir, [kb], embedder, root=kb)
    services = build_services(settings, embedder)
    try:
        live = services.responder
        assert isinstance(live, LiveResponder)
        reloader = index_reloader(settings, services)
        assert reloader is not None and not reloader.check()  # nothing new yet
        (kb / "faq_points.yaml").write_text(POINTS_FAQ, encoding="utf-8")
        add_documents(settings.index_dir, [kb / "faq_points.yaml"], embedder, root=kb)

        turn = TurnInput(history=(), message=QUESTION, now=datetime.now(UTC))
        in_flight = live.stream(turn)  # a streaming turn that started before the swap
        assert reloader.check()
        old = [item for item in in_flight if isinstance(item, Reply)][0]
        new = live.respond(turn)
        assert "points-expiry" not in [c.source_id for c in old.citations]
        assert new.citations[0].source_id == "points-expiry"
        assert live.index is live.current.responder.index  # attributes follow the swap too
        assert not reloader.check()
    finally:
        for close in services.closers:
            close()
        services.database.dispose()


def test_a_generation_that_fails_to_load_leaves_the_old_one_serving(
    tmp_path: Path, kb: Path, embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path, kb_sources=[kb], api=ApiSettings(index_reload_seconds=0.2))
    build_index(settings.index_dir, [kb], embedder, root=kb)
    first = current_generation(settings.index_dir).name
    with serving(settings, embedder) as (client, headers, _):
        # a generation whose vectors are garbage, made live by hand
        broken = settings.index_dir / "gen-99999999T999999-broken"
        shutil.copytree(settings.index_dir / first, broken)
        (broken / "dense.faiss").write_bytes(b"not a faiss index")
        (settings.index_dir / "CURRENT").write_text(broken.name + "\n", encoding="utf-8")
        with caplog.at_level(logging.ERROR, logger="assistant.reload"):
            deadline = time.monotonic() + 10
            while "index reload failed" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
        assert "index reload failed" in caplog.text
        assert client.get("/healthz").json()["index_generation"] == first
        assert _ask(client, headers, "開通のやり方を教えて")["citations"][0]["source_id"] == "sim-activation"

        # a good update after it is picked up
        (kb / "faq_points.yaml").write_text(POINTS_FAQ, encoding="utf-8")
        (settings.index_dir / "CURRENT").write_text(first + "\n", encoding="utf-8")
        report = add_documents(settings.index_dir, [kb / "faq_points.yaml"], embedder, root=kb)
        assert report.generation is not None
        assert generation_manifest(report.generation)["embedder"] == embedder.name
        _wait_for_generation(client, report.generation.name)
        assert _sources(_ask(client, headers, QUESTION))[0] == "points-expiry"

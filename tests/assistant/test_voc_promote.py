"""A fine-tuned model goes live with its own index generation, or not at all: tiny sentence-transformers
models built in-process, a real index on disk, the real app following it, and interrupted promotions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from assistant.active_model import (
    ActiveModel,
    embedder_spec,
    load_configured_embedder,
    read_active,
    read_history,
    write_active,
)
from assistant.api.app import build_services, create_app
from assistant.db import upgrade
from assistant.settings import ApiSettings, Settings
from assistant.voc.finetune import FinetuneConfig
from assistant.voc.promote import Gate, NothingToRollBackError, list_models, promote_model, rollback_model
from eval.promotion import finetune_and_promote
from index.build import build_index, reembed_index
from index.embed import load_embedder
from index.search import FusionConfig
from index.store import current_generation, load_index, read_manifest
from tests.index.test_embed import build_tiny_model

FAQ = """\
- {id: e1, question: cat dog, answer: red mat}
- {id: e2, question: dog cat, answer: mat red}
- {id: e3, question: sat ran, answer: fast blue}
- {id: e4, question: ran sat, answer: blue fast}
"""
GATE = Gate({"recall@1": 0.5}, {"recall@1": 1.0}, None, 12)


class Crash(Exception):
    """Stands for the process dying at that point."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base model and two others standing in for tuned ones (different weights, different names)."""
    root = tmp_path_factory.mktemp("models")
    seeds = {"base": 0, "b": 1, "c": 2}
    return {name: build_tiny_model(root / name, seed=seed) for name, seed in seeds.items()}


@pytest.fixture
def settings(tmp_path: Path, models: dict[str, Path]) -> Settings:
    """Settings on the tiny base model, with a tiny knowledge base indexed."""
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(FAQ, encoding="utf-8")
    s = Settings(home=tmp_path / "home", kb_sources=[kb], embedder=str(models["base"]),
                 cache_dir=tmp_path / "cache", api=ApiSettings(index_reload_seconds=0.2))  # fmt: skip
    build_index(s.index_dir, [kb], load_configured_embedder(s), root=kb, fusion=FusionConfig(sparse_weight=0))
    return s


def _agree(settings: Settings) -> str:
    """The live index loads with the embedder every entry point resolves; returns that embedder's name."""
    embedder = load_configured_embedder(settings)
    assert read_manifest(settings.index_dir)["embedder"] == embedder.name
    assert len(load_index(settings.index_dir, embedder)) == 4
    return embedder.name


def test_promotion_makes_the_model_and_its_index_live_together(
    settings: Settings, models: dict[str, Path]
) -> None:
    base_name = _agree(settings)
    before = current_generation(settings.index_dir).name
    record = promote_model(settings, models["b"], GATE)
    assert record.model == str(models["b"]) and record.replaced_generation == before
    assert read_active(settings) == record and record.after == {"recall@1": 1.0} and record.pairs == 12
    assert current_generation(settings.index_dir).name == record.generation != before
    assert embedder_spec(settings) == str(models["b"])
    assert _agree(settings) == record.embedder != base_name
    # another configured embedder overrides the record (it was tuned from the base model)
    other = settings.model_copy(update={"embedder": str(models["c"])})
    assert embedder_spec(other) == str(models["c"])
    assert [e["action"] for e in list_models(settings).history] == ["promote"]


def test_a_running_server_switches_to_a_promoted_model(settings: Settings, models: dict[str, Path]) -> None:
    upgrade(settings)
    services = build_services(settings)
    try:
        with TestClient(create_app(settings, services)) as client:
            first = client.get("/healthz").json()
            record = promote_model(settings, models["b"], GATE)
            deadline = time.monotonic() + 20
            while client.get("/healthz").json()["index_generation"] != record.generation:
                assert time.monotonic() < deadline, "the server never switched"
                time.sleep(0.1)
            health = client.get("/healthz").json()
            assert health["embedder"] == record.embedder != first["embedder"]
            live = services.responder.current
            hits = live.responder.index.search("the cat a dog", 2)  # through the new query batcher
            assert hits and live.embedder.stats.calls == 1 and live.embedder.name == record.embedder
    finally:
        for close in services.closers:
            close()
        services.database.dispose()


def test_a_crash_after_the_record_is_finished_by_the_next_start(
    settings: Settings, models: dict[str, Path]
) -> None:
    before = current_generation(settings.index_dir).name
    tuned = load_embedder(str(models["b"]), settings.cache_dir)

    def record_then_die(new: Path, replaced: Path) -> None:
        write_active(settings, ActiveModel(str(models["b"]), settings.embedder, tuned.name, new.name,
                                           replaced.name, "2026-11-24T03:00:00+00:00"))  # fmt: skip
        raise Crash

    with pytest.raises(Crash):
        reembed_index(settings.index_dir, tuned, commit=record_then_die)
    assert current_generation(settings.index_dir).name == before  # the crash left CURRENT behind
    assert _agree(settings) == tuned.name  # the next embedder load finished the promotion
    assert current_generation(settings.index_dir).name == read_active(settings).generation  # type: ignore[union-attr]


def test_a_crash_before_the_record_changes_nothing(settings: Settings, models: dict[str, Path]) -> None:
    before = current_generation(settings.index_dir).name
    base_name = _agree(settings)

    def die(new: Path, replaced: Path) -> None:
        raise Crash

    with pytest.raises(Crash):
        reembed_index(settings.index_dir, load_embedder(str(models["b"]), settings.cache_dir), commit=die)
    assert read_active(settings) is None and current_generation(settings.index_dir).name == before
    assert _agree(settings) == base_name


def test_recovery_never_undoes_a_later_index_change(settings: Settings, models: dict[str, Path]) -> None:
    promote_model(settings, models["b"], GATE)
    kb = settings.kb_sources[0]
    # an explicit rebuild with another embedder after the promotion (``index build --embedder``)
    other = load_embedder(str(models["c"]), settings.cache_dir)
    report = build_index(settings.index_dir, [kb], other, root=kb)
    assert report.generation is not None
    load_configured_embedder(settings)  # runs the recovery: it must leave that rebuild live
    assert current_generation(settings.index_dir) == report.generation


def test_rollback_goes_to_the_previous_model_then_the_base(
    settings: Settings, models: dict[str, Path]
) -> None:
    base_name = _agree(settings)
    b = promote_model(settings, models["b"], GATE)
    promote_model(settings, models["c"], GATE)
    back = rollback_model(settings)
    assert back.model == str(models["b"]) and back.action == "rollback" and _agree(settings) == b.embedder
    base = rollback_model(settings)
    assert base.model is None and embedder_spec(settings) == settings.embedder
    assert _agree(settings) == base_name
    with pytest.raises(NothingToRollBackError):
        rollback_model(settings)
    assert [e["action"] for e in read_history(settings)] == ["promote", "promote", "rollback", "rollback"]


def test_rollback_to_base_skips_every_promotion(settings: Settings, models: dict[str, Path]) -> None:
    base_name = _agree(settings)
    promote_model(settings, models["b"], GATE)
    promote_model(settings, models["c"], GATE)
    assert rollback_model(settings, to_base=True).model is None and _agree(settings) == base_name


def test_a_model_that_is_not_better_is_deleted_and_nothing_changes(
    settings: Settings, tmp_path: Path
) -> None:
    before = current_generation(settings.index_dir).name
    index = load_index(settings.index_dir, load_configured_embedder(settings))
    links = [("cat dog", "e1"), ("dog cat", "e2"), ("sat ran", "e3"), ("ran sat", "e4")] * 2
    out = tmp_path / "tuned"
    # the live model already finds every held-out question first: nothing can be strictly better
    outcome = finetune_and_promote(settings, index, links, k=1, out=out,
                                   config=FinetuneConfig(epochs=1, batch_size=4))  # fmt: skip
    assert outcome.before["recall@1"] == 1.0 and not outcome.goes_live and outcome.model is None
    assert not out.exists() and read_active(settings) is None
    assert current_generation(settings.index_dir).name == before
    assert [(e["action"], e["pairs"]) for e in read_history(settings)] == [("refused", 8)]


def test_the_model_commands(
    settings: Settings, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from assistant.cli import app

    for key, value in {"MADOGUCHI_HOME": settings.home, "MADOGUCHI_EMBEDDER": settings.embedder,
                       "MADOGUCHI_CACHE_DIR": settings.cache_dir}.items():  # fmt: skip
        monkeypatch.setenv(key, str(value))
    runner = CliRunner()
    refused = runner.invoke(app, ["voc", "model", "rollback"])
    assert refused.exit_code == 2 and "already in use" in refused.output
    promote_model(settings, models["b"], GATE)
    listed = json.loads(runner.invoke(app, ["voc", "model", "list"]).stdout)
    assert listed["active"]["model"] == str(models["b"]) and str(models["b"]) not in listed["tuned_on_disk"]
    back = runner.invoke(app, ["voc", "model", "rollback"])
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["model"] is None and _agree(settings)

"""``madoguchi voc finetune`` end to end: reviewed questions in a real SQLite database, a tiny
sentence-transformers model built in-process, a real index on disk and MLflow in a temporary store.

The knowledge base and the reviewed questions share no word: each entry is asked about with one
keyword of its own (``ran`` means e1, ``fast`` e2, ...), which the untrained base model cannot know. The
questions are linked through the real review queue and marked applied; the knowledge-base side of
``voc learn`` (writing them as variations of their entries) is left out, so that the held-out questions
are not already in the index the gate measures the base model on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant.active_model import embedder_spec, load_configured_embedder, models_dir, read_active
from assistant.db import Database, upgrade
from assistant.keys import issue_key
from assistant.settings import Settings
from assistant.transcripts import BotReply, NewConversation, add_bot_reply, add_message, open_conversation
from assistant.voc.review import collect_review_items, link_item, list_items, mark_applied
from eval.track import get_run, sqlite_uri
from index.build import build_index
from index.store import current_generation, load_index, read_manifest
from tests.index.test_embed import build_tiny_model

FAQ = """\
- {id: e1, question: cat sat, answer: red mat}
- {id: e2, question: dog sat, answer: blue mat}
- {id: e3, question: red cat, answer: dog mat}
- {id: e4, question: blue dog, answer: cat mat}
"""
KEYWORDS = {"e1": "ran", "e2": "fast", "e3": "slow", "e4": "on"}
TEMPLATES = ["{w}", "the {w}", "a {w}", "{w} the", "{w} a", "the {w} a"]
# 24 links; --holdout 0.25 keeps 6 questions out of training to judge the tuned model on.
LINKS = [(t.format(w=w), faq_id) for faq_id, w in KEYWORDS.items() for t in TEMPLATES]
# Seeded, so deterministic: held-out recall@1 goes from 0 to 1 (a neighbourhood of these values does too:
# 40 epochs, or a learning rate of 3e-3, give the same result).
TRAINING = ["--epochs", "20", "--learning-rate", "1e-3", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The model is tiny: torch's thread pool only costs time, the more so on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained base model: seed 2 finds none of the held-out questions' entries first."""
    return build_tiny_model(tmp_path_factory.mktemp("base"), seed=2)


@pytest.fixture
def settings(tmp_path: Path, base_model: Path) -> Settings:
    """Settings on the tiny base model: the knowledge base indexed, the database migrated."""
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(FAQ, encoding="utf-8")
    s = Settings(home=tmp_path / "home", kb_sources=[kb], embedder=str(base_model),
                 cache_dir=tmp_path / "cache")  # fmt: skip
    build_index(s.index_dir, [kb], load_configured_embedder(s), root=kb)
    upgrade(s)
    return s


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database.connect(settings.database_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def runner(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner whose ``madoguchi`` reads these settings from the environment."""
    env = {
        "MADOGUCHI_HOME": settings.home,
        "MADOGUCHI_EMBEDDER": settings.embedder,
        "MADOGUCHI_CACHE_DIR": settings.cache_dir,
        "MADOGUCHI_DATABASE_URL": settings.database_url,
        "MADOGUCHI_KB_SOURCES": json.dumps([str(p) for p in settings.kb_sources]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("MADOGUCHI_TRACKING_URI", raising=False)
    return CliRunner()


def _review(database: Database, links: list[tuple[str, str]], *, applied: bool) -> None:
    """Each question fails in a chat, is queued for review, linked to its entry and (maybe) applied."""
    with database.session() as session:
        key = issue_key(session, "customer", "site").info
        for question, _ in links:
            conversation = open_conversation(session, key, NewConversation())
            asked = add_message(session, conversation.id, "customer", question)
            add_bot_reply(session, conversation, asked, BotReply("…", "escalate", 0.1, ("low_confidence",)))
    now = datetime.now(UTC)
    with database.session() as session:
        assert collect_review_items(session, now - timedelta(hours=1), now, 0.5, now) == len(links)
        queue = list_items(session, "pending", len(links))
        for item, (question, faq_id) in zip(queue, links, strict=True):
            assert item.question == question
            link_item(session, item.id, faq_id, set(KEYWORDS), None, now)
        if applied:
            mark_applied(session, [item.id for item in queue], now)


def _agree(settings: Settings) -> str:
    """The live index loads with the embedder every entry point resolves; returns that embedder's name."""
    embedder = load_configured_embedder(settings)
    assert read_manifest(settings.index_dir)["embedder"] == embedder.name
    assert len(load_index(settings.index_dir, embedder)) == len(KEYWORDS)
    return embedder.name


def test_a_model_tuned_on_reviewed_questions_goes_live(
    settings: Settings, database: Database, runner: CliRunner, tmp_path: Path
) -> None:
    from assistant.cli import app

    base_name = _agree(settings)
    before_generation = current_generation(settings.index_dir).name
    _review(database, LINKS, applied=True)
    uri = sqlite_uri(tmp_path / "mlflow.db")

    result = runner.invoke(
        app, ["voc", "finetune", "--holdout", "0.25", "--k", "1", *TRAINING, "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["goes_live"] is True
    assert (outcome["pairs"], outcome["train_pairs"], outcome["held_out"]) == (24, 18, 6)
    assert outcome["after"]["recall@1"] > outcome["before"]["recall@1"]
    assert outcome["after"]["recall@1"] == 1.0

    # the tuned model is the active one, saved under <home>/models, with its own index generation
    model = Path(outcome["model"])
    assert model.parent == models_dir(settings) and model.is_dir()
    record = read_active(settings)
    assert record is not None and record.model == str(model) and record.action == "promote"
    assert record.generation == outcome["generation"] == current_generation(settings.index_dir).name
    assert record.replaced_generation == before_generation != record.generation
    assert (record.before, record.after, record.pairs) == (outcome["before"], outcome["after"], 24)
    assert embedder_spec(settings) == str(model)
    assert _agree(settings) == record.embedder != base_name
    assert read_manifest(settings.index_dir)["embedder"] == record.embedder

    # the run is in MLflow, named, with the gate's verdict and both measurements
    assert record.mlflow_run == outcome["mlflow_run"] is not None
    logged = get_run(uri, outcome["mlflow_run"])
    assert logged.name == "voc-finetune" and logged.tags["goes_live"] == "True"
    assert logged.metrics["recall_at_1/after"] == 1.0 > logged.metrics["recall_at_1/before"]
    assert logged.params["train_pairs"] == "18" and logged.params["base"] == settings.embedder


def test_no_applied_review_links_is_refused_and_changes_nothing(
    settings: Settings, database: Database, runner: CliRunner
) -> None:
    from assistant.cli import app

    before_generation = current_generation(settings.index_dir).name
    base_name = _agree(settings)
    _review(database, LINKS[:6], applied=False)  # linked, but not in the knowledge base yet

    result = runner.invoke(app, ["voc", "finetune", "--no-track", *TRAINING])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # the error console wraps long lines
    assert "need at least 2 training pairs" in message and "(applied review links: 0)" in message
    assert result.stdout == ""
    assert read_active(settings) is None and not models_dir(settings).exists()
    assert current_generation(settings.index_dir).name == before_generation
    assert _agree(settings) == base_name


@pytest.mark.parametrize(
    "option",
    [["--epochs", "0"], ["--batch-size", "1"], ["--learning-rate", "0.5"], ["--threads", "0"]],
    ids=lambda o: o[0],
)
def test_training_options_out_of_range_are_refused(option: list[str]) -> None:
    from assistant.cli import app

    result = CliRunner().invoke(app, ["voc", "finetune", "--no-track", *option])
    assert result.exit_code == 2
    assert "Invalid value" in result.output and option[0] in result.output


def test_torch_threads_are_set_for_the_block_and_restored_after_a_failure() -> None:
    import torch

    from assistant.voc.finetune import torch_threads

    outside = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(outside + 1):
        assert torch.get_num_threads() == outside + 1
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == outside

"""The ``madoguchi voc`` commands of the learning loop's last mile: ``finetune`` (gated promotion),
``model list|rollback``, ``nightly`` and ``schedule``.

Part of the ``madoguchi`` command (``assistant.cli`` registers them with ``add_voc_commands``); like
it, a composition root that may reach every package. Each command parses, builds settings, calls one
library function (``eval.promotion``, ``assistant.voc.promote``, ``eval.nightly``) and prints JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from assistant.settings import Settings

err = Console(stderr=True)
log = logging.getLogger("madoguchi")

NoTrackOpt = Annotated[bool, typer.Option("--no-track", help="Do not log the run to MLflow.")]
TrackingUriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="MADOGUCHI_TRACKING_URI",
    help="MLflow tracking URI (default: sqlite:///<home>/mlflow.db, artifacts beside it).")]


def _print_json(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _tracking(settings: Settings, no_track: bool, uri: str | None):  # type: ignore[no-untyped-def]
    from eval.track import TrackingConfig

    if no_track:
        return None
    return TrackingConfig(uri) if uri else TrackingConfig.default(settings.home)


def _database(settings: Settings):  # type: ignore[no-untyped-def]
    from assistant.db import Database, upgrade

    upgrade(settings)
    return Database.connect(settings.database_url)


def _cached_embedder(settings: Settings):  # type: ignore[no-untyped-def]
    from assistant.active_model import load_configured_embedder
    from index.cache import CachedEmbedder, EmbeddingCache

    return CachedEmbedder(load_configured_embedder(settings),
                          EmbeddingCache(settings.cache_dir / "embeddings.sqlite"))  # fmt: skip


def finetune(
    out: Annotated[Path | None, typer.Option(help="Where to save the tuned model.")] = None,
    holdout: Annotated[float, typer.Option(min=0.1, max=0.5, help="Share of questions held out.")] = 0.2,
    k: Annotated[int, typer.Option(min=1, max=100)] = 10,
    epochs: Annotated[int, typer.Option(min=1, max=100, help="Passes over the training pairs.")] = 1,
    learning_rate: Annotated[float, typer.Option(min=1e-7, max=1e-2, help="AdamW learning rate.")] = 2e-5,
    batch_size: Annotated[int, typer.Option(min=2, max=512, help="Pairs a step (in-batch negatives).")] = 16,
    threads: Annotated[
        int | None, typer.Option(min=1, max=256, help="Torch threads (default: voc.job_threads, 1).")
    ] = None,
    no_track: NoTrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Fine-tune the embedder on reviewed (question, entry) pairs; it goes live only if it retrieves better.

    Held-out reviewed questions decide. A better model is saved (default <home>/models/finetuned-<time>),
    the index is re-embedded with it as a new generation and it becomes the active model (running
    servers switch by themselves); a worse one is deleted and nothing changes. --epochs, --learning-rate
    and --batch-size set the training pass (defaults: one epoch at 2e-5, 16 pairs a step); --threads
    the torch threads (default voc.job_threads, 1: the job shares the cores with the API).
    """
    from assistant.voc.finetune import FinetuneConfig, FinetuneError, reviewed_links
    from eval.learning import LearningDataError
    from eval.promotion import finetune_and_promote
    from index.store import IndexMismatchError, IndexNotFoundError, load_index

    s = Settings()
    try:
        index = load_index(s.index_dir, _cached_embedder(s))
    except (IndexNotFoundError, IndexMismatchError) as exc:
        _fail(str(exc))
        return
    database = _database(s)
    try:
        with database.session() as session:
            links = reviewed_links(session)
    finally:
        database.dispose()
    config = FinetuneConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    try:
        outcome = finetune_and_promote(s, index, links, holdout=holdout, k=k, out=out, config=config,
                                       threads=threads,
                                       tracking=_tracking(s, no_track, tracking_uri))  # fmt: skip
    except (FinetuneError, LearningDataError) as exc:
        _fail(f"{exc} (applied review links: {len(links)})")
        return
    from dataclasses import asdict

    _print_json(asdict(outcome))
    err.print(f"better: {outcome.model} is live with index {outcome.generation}" if outcome.goes_live
              else "not better: the tuned model was deleted; nothing changed")  # fmt: skip


def model_list() -> None:
    """The active embedding model, the tuned models on disk, and the history of promotions."""
    from dataclasses import asdict

    from assistant.voc.promote import list_models

    _print_json(asdict(list_models(Settings())))


def model_rollback(
    to_base: Annotated[bool, typer.Option("--base", help="Back to the base model, not the previous one.")]
    = False,
) -> None:
    """Go back to the previous model (or the base one): the index is re-embedded, then switched."""
    from dataclasses import asdict

    from assistant.voc.promote import NothingToRollBackError, rollback_model

    try:
        record = rollback_model(Settings(), to_base=to_base)
    except NothingToRollBackError as exc:
        _fail(str(exc))
        return
    _print_json(asdict(record))


def nightly(no_track: NoTrackOpt = False, tracking_uri: TrackingUriOpt = None) -> None:
    """One run of the daily loop (review collect, trends, learn, fine-tune when due); JSON summary.

    Safe from cron on every replica: a run that finds another one going does nothing.
    """
    from dataclasses import asdict
    from datetime import UTC, datetime

    from eval.nightly import run_nightly

    s = Settings()
    database = _database(s)
    try:
        summary = run_nightly(s, database, datetime.now(UTC), lambda: _cached_embedder(s),
                              tracking=_tracking(s, no_track, tracking_uri))  # fmt: skip
    finally:
        database.dispose()
    _print_json(asdict(summary))


def schedule(
    at: Annotated[str, typer.Option("--at", help="Time of day HH:MM, in voc.report_timezone.")] = "03:00",
    no_track: NoTrackOpt = False, tracking_uri: TrackingUriOpt = None,
) -> None:
    """Run ``voc nightly`` every day at ``--at`` until stopped (for a systemd service or a container)."""
    import time as clock
    from datetime import UTC, datetime, time

    from eval.nightly import run_daily

    try:
        when = time.fromisoformat(at)
    except ValueError:
        _fail(f"--at {at!r} is not HH:MM")
        return
    s = Settings()
    run_daily(when, s.voc.report_timezone, lambda: nightly(no_track, tracking_uri), lambda: datetime.now(UTC),
              clock.sleep)  # fmt: skip


def add_voc_commands(voc_app: typer.Typer) -> None:
    """Register these commands under ``madoguchi voc``."""
    voc_app.command("finetune")(finetune)
    voc_app.command("nightly")(nightly)
    voc_app.command("schedule")(schedule)
    model_app = typer.Typer(help="The active embedding model: list, roll back.", no_args_is_help=True)
    model_app.command("list")(model_list)
    model_app.command("rollback")(model_rollback)
    voc_app.add_typer(model_app, name="model")

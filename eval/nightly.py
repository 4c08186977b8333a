"""``madoguchi voc nightly``: one run of the daily learning loop, safe to repeat and to schedule twice.

In order: queue the failed questions of the last ``voc.nightly_review_days`` for review (each once),
run the trend check (alerts have a cool-down), apply the reviewed links and drafts to the knowledge
base and index with the before/after evaluation (``eval.learning.learn_and_evaluate``; only items not
applied yet), and fine-tune with gated promotion (``eval.promotion``) when at least
``voc.finetune_min_new_pairs`` applied links are new since the last fine-tuning attempt. Every step
does nothing the second time over unchanged data, so a repeated run is harmless.

The whole run holds ``assistant.voc.joblock.job_lock``: of two cron runs or replicas, one works and
the other returns at once, saying so. ``next_run`` and ``run_daily`` drive ``voc schedule``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from assistant.active_model import read_history
from assistant.db import Database
from assistant.settings import Settings
from assistant.voc.alerts import run_trend_check
from assistant.voc.finetune import FinetuneError, reviewed_links, torch_threads
from assistant.voc.joblock import job_lock
from assistant.voc.review import collect_review_items, mark_applied, unapplied
from eval.learning import LearningDataError, learn_and_evaluate
from eval.promotion import finetune_and_promote
from eval.track import TrackingConfig
from index.embed import Embedder
from index.store import load_index

log = logging.getLogger(__name__)
LOCK_NAME = "voc-nightly"


@dataclass
class NightlySummary:
    """What one nightly run did (printed as JSON)."""

    ran: bool
    started_at: str
    skipped: str | None = None  # why the run did nothing (another run holds the lock)
    review_queued: int = 0
    alerts: int = 0
    learned: dict[str, Any] | None = None
    finetune: dict[str, Any] = field(default_factory=dict)


def learned_dir(settings: Settings) -> Path | None:
    """Where learned variations and drafts go: beside the overlay setting, or the first KB folder."""
    if settings.voc.learned_variations is not None:
        return settings.voc.learned_variations.parent
    return next((p for p in settings.kb_sources if p.is_dir()), None)


def pairs_at_last_attempt(settings: Settings) -> int:
    """How many applied links the last fine-tuning attempt (promoted or refused) had."""
    attempts = [e for e in read_history(settings) if e.get("action") in ("promote", "refused")]
    counts = [int(e.get("pairs", 0)) for e in attempts]
    return counts[-1] if counts else 0


def run_nightly(
    settings: Settings, database: Database, now: datetime, load_embedder: Callable[[], Embedder], *,
    tracking: TrackingConfig | None = None,
) -> NightlySummary:  # fmt: skip
    """One idempotent run of the daily loop, or none if another run holds the lock."""
    summary = NightlySummary(ran=False, started_at=now.isoformat())
    with job_lock(database, LOCK_NAME) as taken:
        if not taken:
            summary.skipped = "another nightly run holds the lock"
            log.info("voc nightly: %s", summary.skipped)
            return summary
        summary.ran = True
        voc = settings.voc
        with database.session() as session:
            since = now - timedelta(days=voc.nightly_review_days)
            summary.review_queued = collect_review_items(session, since, now, voc.low_confidence, now)
        summary.alerts = len(run_trend_check(database, voc, now))
        with torch_threads(voc.job_threads):  # re-embedding and training share the cores with the API
            embedder = load_embedder()
            summary.learned = _learn(settings, database, embedder, now, tracking)
            summary.finetune = _finetune(settings, database, embedder, tracking)
    return summary


def _learn(
    settings: Settings, database: Database, embedder: Embedder, now: datetime, tracking: TrackingConfig | None
) -> dict[str, Any] | None:
    with database.session() as session:
        items = unapplied(session)
    kb_dir = learned_dir(settings)
    if not items or kb_dir is None:
        return None if not items else {"skipped": "no knowledge-base folder for learned variations"}
    result = learn_and_evaluate(kb_dir, settings.index_dir, embedder, items, now, tracking=tracking)
    with database.session() as session:
        mark_applied(session, [i.id for i in items], now)
    generation = result.update.generation if result.update else None
    return {"items": result.items, "learned_before": result.learned_before,
            "learned_after": result.learned_after, "regression_after": result.regression_after,
            "generation": generation.name if generation else None, "mlflow_run": result.run_id}  # fmt: skip


def _finetune(
    settings: Settings, database: Database, embedder: Embedder, tracking: TrackingConfig | None
) -> dict[str, Any]:
    with database.session() as session:
        links = reviewed_links(session)
    new = len(links) - pairs_at_last_attempt(settings)
    wanted = settings.voc.finetune_min_new_pairs
    if new < wanted:
        return {"skipped": f"{new} new reviewed pairs since the last attempt, fewer than {wanted}"}
    try:
        outcome = finetune_and_promote(settings, load_index(settings.index_dir, embedder), links,
                                       tracking=tracking)  # fmt: skip
    except (FinetuneError, LearningDataError) as exc:
        return {"skipped": str(exc)}
    return {"goes_live": outcome.goes_live, "model": outcome.model, "generation": outcome.generation,
            "before": outcome.before, "after": outcome.after, "mlflow_run": outcome.mlflow_run}  # fmt: skip


def next_run(now: datetime, at: time, zone: str) -> datetime:
    """The next time of day ``at`` in ``zone`` strictly after ``now`` (aware)."""
    local = now.astimezone(ZoneInfo(zone))
    candidate = datetime.combine(local.date(), at, ZoneInfo(zone))
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, ZoneInfo(zone))
    return candidate


def run_daily(
    at: time, zone: str, job: Callable[[], None], clock: Callable[[], datetime],
    sleep: Callable[[float], None], *, runs: int | None = None,
) -> None:  # fmt: skip
    """Call ``job`` every day at ``at`` (``zone``), forever or ``runs`` times; a failing run is logged
    and the loop goes on (a scheduler's boundary)."""
    done = 0
    while runs is None or done < runs:
        due = next_run(clock(), at, zone)
        log.info("voc schedule: next run at %s", due.isoformat())
        while (wait := (due - clock()).total_seconds()) > 0:
            sleep(min(wait, 60.0))
        try:
            job()
        except Exception:  # the scheduler's boundary: tomorrow's run must still happen
            log.exception("scheduled voc nightly run failed")
        done += 1

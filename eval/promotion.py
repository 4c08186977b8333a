"""Fine-tune the embedder on reviewed pairs and put it live only if the held-out evaluation says better.

``finetune_and_promote`` (``madoguchi voc finetune``, and ``voc nightly`` when enough new pairs came
in): the applied review links are split into training pairs and held-out questions (seeded); a copy of
the base model (``assistant.active_model.base_model``) is trained on the pairs
(``assistant.voc.finetune``); the held-out questions are searched on the live index and on the
knowledge base re-embedded by the tuned model (``eval.learning.gate_finetuned``). The run is logged to
MLflow. Better: ``assistant.voc.promote.promote_model`` makes it live (new index generation, active
model record, ``CURRENT``). Not better: the model is deleted and nothing else changes; the refusal is
written to the models' history so that the nightly job waits for new pairs before trying again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from assistant.active_model import append_history, base_model, models_dir
from assistant.settings import Settings
from assistant.voc.finetune import FinetuneConfig, finetune_model, torch_threads, training_pairs
from assistant.voc.promote import Gate, discard_model, promote_model
from eval.learning import gate_finetuned
from eval.track import RunRecord, TrackingConfig, log_run
from index.embed import SentenceTransformerEmbedder
from index.search import KnowledgeIndex


@dataclass(frozen=True)
class FinetuneOutcome:
    """What one fine-tuning attempt did."""

    goes_live: bool
    model: str | None  # the live tuned model's folder when it went live
    generation: str | None  # the index generation it went live with
    pairs: int  # applied review links available (the nightly job counts new ones from here)
    train_pairs: int
    held_out: int
    before: dict[str, float]
    after: dict[str, float]
    mlflow_run: str | None


def split_links(
    links: Sequence[tuple[str, str]], holdout: float, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(held out, training) links: a seeded shuffle, at least one held out."""
    order = list(links)
    random.Random(seed).shuffle(order)
    cut = max(1, int(len(order) * holdout))
    return order[:cut], order[cut:]


def finetune_and_promote(
    settings: Settings, index: KnowledgeIndex, links: Sequence[tuple[str, str]], *, holdout: float = 0.2,
    k: int = 10, out: Path | None = None, config: FinetuneConfig | None = None,
    tracking: TrackingConfig | None = None, threads: int | None = None,
) -> FinetuneOutcome:  # fmt: skip
    """Train, gate on held-out links against ``index`` (the live one), then promote or delete.

    Torch runs on ``threads`` (default ``voc.job_threads``) for the whole attempt. Raises
    ``assistant.voc.finetune.FinetuneError`` when there are too few training pairs and
    ``eval.learning.LearningDataError`` when no held-out question is left.
    """
    with torch_threads(threads or settings.voc.job_threads):
        return _attempt(settings, index, links, holdout, k, out, config, tracking)


def _attempt(
    settings: Settings, index: KnowledgeIndex, links: Sequence[tuple[str, str]], holdout: float, k: int,
    out: Path | None, config: FinetuneConfig | None, tracking: TrackingConfig | None,
) -> FinetuneOutcome:  # fmt: skip
    held, train = split_links(links, holdout)
    target = out or models_dir(settings) / f"finetuned-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    base = base_model(settings)
    tuned = finetune_model(base, training_pairs(index, train), target, config or FinetuneConfig())
    try:
        questions = {f"held:{i}": link for i, link in enumerate(held)}
        gate = gate_finetuned(index, questions, SentenceTransformerEmbedder(tuned), k=k)
    except BaseException:
        discard_model(tuned)
        raise
    run_id = None
    if tracking is not None:
        metrics = {f"{m}/before": v for m, v in gate.before.items()}
        metrics |= {f"{m}/after": v for m, v in gate.after.items()}
        params = {"train_pairs": len(train), "held_out": gate.held_out, "base": str(base), "k": k,
                  "live_embedder": index.embedder.name}  # fmt: skip
        record = RunRecord("voc-finetune", params, metrics, {"goes_live": str(gate.goes_live)})
        run_id = log_run(tracking, record)
    generation = None
    if gate.goes_live:
        active = promote_model(settings, tuned, Gate(gate.before, gate.after, run_id, len(links)))
        generation = active.generation
    else:
        discard_model(tuned)
        append_history(settings, {
            "action": "refused", "model": None, "at": datetime.now(UTC).isoformat(), "pairs": len(links),
            "before": gate.before, "after": gate.after, "mlflow_run": run_id,
        })  # fmt: skip
    return FinetuneOutcome(
        gate.goes_live, str(tuned) if gate.goes_live else None, generation, len(links), len(train),
        gate.held_out, gate.before, gate.after, run_id,
    )  # fmt: skip

"""Make an embedding model live, or take it back: re-embed the index, then record and publish in an
order a crash cannot break.

``promote_model`` puts a tuned model (one the evaluation judged better: ``eval.promotion``) live:
the live index's documents are embedded by it into a new generation, the active-model record
(``assistant.active_model``) is written naming that generation and the one it replaces, and only
then does the index's ``CURRENT`` move (``index.build.reembed_index`` does the three under the
index's writer lock). Running servers swap the new generation in by themselves (``assistant.reload``).

``rollback_model`` goes back the same way to the model live before the current one (or to the base
model). ``list_models`` shows the record, the history and the tuned models on disk.

Errors: ``NothingToRollBackError``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assistant.active_model import (
    ActiveModel,
    models_dir,
    read_active,
    read_history,
    recover_promotion,
    write_active,
)
from assistant.settings import Settings
from index.embed import Embedder, load_embedder

log = logging.getLogger(__name__)


class NothingToRollBackError(LookupError):
    """No promoted model is live: there is nothing to roll back from."""


@dataclass(frozen=True)
class Gate:
    """The evaluation behind a promotion (what ``eval.learning.gate_finetuned`` measured)."""

    before: dict[str, float]
    after: dict[str, float]
    mlflow_run: str | None = None
    pairs: int = 0


def _cached(settings: Settings, embedder: Embedder) -> Embedder:
    from index.cache import CachedEmbedder, EmbeddingCache

    return CachedEmbedder(embedder, EmbeddingCache(settings.cache_dir / "embeddings.sqlite"))


def _switch(
    settings: Settings, model: str | None, embedder: Embedder, action: str, gate: Gate | None
) -> ActiveModel:
    """Re-embed the live index with ``embedder``; record ``model`` as active; publish (in that order)."""
    from index.build import reembed_index

    recover_promotion(settings)  # a half-finished earlier change is finished first
    written: list[ActiveModel] = []

    def commit(new: Path, replaced: Path) -> None:
        record = ActiveModel(
            model=model, base=settings.embedder, embedder=embedder.name, generation=new.name,
            replaced_generation=replaced.name, at=datetime.now(UTC).isoformat(), action=action,
            before=dict(gate.before) if gate else {}, after=dict(gate.after) if gate else {},
            mlflow_run=gate.mlflow_run if gate else None, pairs=gate.pairs if gate else 0,
        )  # fmt: skip
        write_active(settings, record)
        written.append(record)

    reembed_index(settings.index_dir, _cached(settings, embedder), commit=commit)
    live = model or settings.embedder
    log.info("%s: %s is live (index generation %s)", action, live, written[0].generation)
    return written[0]


def promote_model(settings: Settings, model: Path, gate: Gate) -> ActiveModel:
    """Make the tuned ``model`` live: a new index generation embedded by it, then the record, then
    ``CURRENT``. Returns the new record."""
    embedder = load_embedder(str(model), settings.cache_dir)
    return _switch(settings, str(model), embedder, "promote", gate)


def model_stack(settings: Settings) -> list[str | None]:
    """The models made live, oldest first, replayed from the history: a promotion pushes its model, a
    rollback pops down to its target (None: the base model). The last is the live one."""
    stack: list[str | None] = [None]
    for entry in read_history(settings):
        action, model = entry.get("action"), entry.get("model")
        if action == "promote":
            stack.append(model)
        elif action == "rollback":
            while len(stack) > 1 and stack[-1] != model:
                stack.pop()
    return stack


def rollback_model(settings: Settings, *, to_base: bool = False) -> ActiveModel:
    """Go back to the model live before the current one (or to the base model), re-embedding the index.

    A previous model whose folder was deleted is skipped.
    """
    stack = model_stack(settings)
    if len(stack) == 1:
        raise NothingToRollBackError("no fine-tuned model is live; the base model is already in use")
    earlier = [] if to_base else [m for m in stack[:-1] if m is None or Path(m).is_dir()]
    target = earlier[-1] if earlier else None
    embedder = load_embedder(target or settings.embedder, settings.cache_dir)
    return _switch(settings, target, embedder, "rollback", None)


@dataclass(frozen=True)
class ModelsView:
    """What ``voc model list`` shows."""

    active: dict[str, Any] | None
    embedder_setting: str
    tuned_on_disk: tuple[str, ...]
    history: tuple[dict[str, Any], ...]


def list_models(settings: Settings) -> ModelsView:
    """The active record, the tuned model folders on disk and the history, newest last."""
    from dataclasses import asdict

    record = read_active(settings)
    folder = models_dir(settings)
    tuned = sorted(str(p) for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []
    return ModelsView(asdict(record) if record else None, settings.embedder, tuple(tuned),
                      tuple(read_history(settings)))  # fmt: skip


def discard_model(model: Path) -> None:
    """Delete a tuned model that did not go live."""
    shutil.rmtree(model, ignore_errors=True)

"""The active embedding model: which fine-tuned model is live, and the one embedder resolution.

``<home>/models/active.json`` names the model folder ``madoguchi voc finetune`` promoted (or none: the
base model, after a rollback), with when, the before/after metrics of its gate and the MLflow run.
It applies while ``settings.embedder`` is the base it was tuned from (``default`` normally); setting
another embedder overrides it. ``<home>/models/history.jsonl`` keeps every promotion and rollback.

``load_configured_embedder`` is what every entry point that loads the embedder calls (``madoguchi
serve``, the CLI, the server's index reloader).

Crash order of a promotion (``assistant.voc.promote``): the new index generation is written completely
but not made live; then this record is written atomically, naming that generation and the one it
replaces (the commit point); then ``CURRENT`` moves. A crash before the record changes nothing; a
crash after it is finished by ``recover_promotion`` (run before every embedder load): when ``CURRENT``
still names the replaced generation, the recorded one is made live. So the live index and the active
model never disagree for longer than it takes the next command or server start to look.

Errors: ``ActiveModelError`` (an unreadable record).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant.settings import Settings
from index.embed import DEFAULT_SPECS, Embedder, load_embedder
from index.store import fsync_dir

log = logging.getLogger(__name__)

ACTIVE_FILE = "active.json"
HISTORY_FILE = "history.jsonl"


class ActiveModelError(ValueError):
    """The active-model record cannot be read."""


@dataclass(frozen=True)
class ActiveModel:
    """The record of the model a promotion or rollback made live."""

    model: str | None  # the tuned model's folder; None: the base model itself
    base: str  # the ``settings.embedder`` it applies to (the model it was tuned from)
    embedder: str  # the embedder name the index manifest records for it
    generation: str  # the index generation built with it when it went live
    replaced_generation: str | None  # the generation live before (crash recovery)
    at: str  # ISO time it went live
    action: str = "promote"  # promote or rollback
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    mlflow_run: str | None = None
    pairs: int = 0  # reviewed pairs it was trained on

    @classmethod
    def of(cls, data: dict[str, Any]) -> ActiveModel:
        """From the JSON form."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            raise ActiveModelError(f"active-model record lacks fields: {exc}") from exc


def models_dir(settings: Settings) -> Path:
    """Where tuned models and the active-model record live."""
    return settings.home / "models"


def read_active(settings: Settings) -> ActiveModel | None:
    """The active-model record, or None when no model was ever promoted."""
    path = models_dir(settings) / ACTIVE_FILE
    if not path.is_file():
        return None
    try:
        return ActiveModel.of(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ActiveModelError(f"{path} is not valid JSON: {exc}") from exc


def write_active(settings: Settings, record: ActiveModel) -> None:
    """Replace the record atomically (write, fsync, rename, fsync the folder) and log it in history."""
    folder = models_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (ACTIVE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(record), ensure_ascii=False, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / ACTIVE_FILE)
    fsync_dir(folder)
    append_history(settings, asdict(record))


def append_history(settings: Settings, entry: dict[str, Any]) -> None:
    """Append one line to the models' history (promotions, refusals, rollbacks)."""
    folder = models_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / HISTORY_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")


def read_history(settings: Settings) -> list[dict[str, Any]]:
    """Every history line, oldest first."""
    path = models_dir(settings) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def embedder_spec(settings: Settings) -> str:
    """The embedder to load: the active tuned model when it applies, else ``settings.embedder``."""
    record = read_active(settings)
    if record is not None and record.model and record.base == settings.embedder:
        return record.model
    return settings.embedder


def base_model(settings: Settings) -> str | Path:
    """The model fine-tuning starts from: the converted default model, or the configured one."""
    if settings.embedder in DEFAULT_SPECS:
        from index.e5convert import ensure_default_model

        return ensure_default_model(settings.cache_dir)
    return settings.embedder


def load_configured_embedder(settings: Settings) -> Embedder:
    """Finish any interrupted promotion, then load the embedder the settings and record name."""
    recover_promotion(settings)
    return load_embedder(embedder_spec(settings), settings.cache_dir)


def recover_promotion(settings: Settings) -> bool:
    """Make the recorded generation live if a crash stopped a promotion after its commit point.

    True when it did. Only when ``CURRENT`` still names the generation the record replaced: a later
    ``index build`` or ``voc learn`` is never undone.
    """
    from index.build import writer_lock
    from index.store import IndexNotFoundError, current_generation, publish_generation

    record = read_active(settings)
    if record is None or record.replaced_generation is None:
        return False
    directory = settings.index_dir
    gen = directory / record.generation
    try:
        with writer_lock(directory):
            live = current_generation(directory)
            if live.name != record.replaced_generation or live.name == record.generation:
                return False
            if not (gen / "manifest.json").is_file():
                log.error("active model %s names index generation %s, which is missing",
                          record.model, record.generation)
                return False
            publish_generation(directory, gen)
    except IndexNotFoundError:
        return False
    log.warning("finished an interrupted model change: index generation %s (embedder %s) is live",
                record.generation, record.embedder)
    return True


"""Evaluation suites: YAML files in ``eval/suites/`` naming a dataset, a knowledge base and the replay.

Paths in a suite may start with ``{data}`` (the public evaluation data, default ``../shared/data``
beside the repository) or ``{repo}``; other relative paths are relative to the repository.

Errors: ``SuiteNotFoundError`` (no suite of that name or path); ``SuiteConfigError`` (a suite file
that does not validate).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from eval.datasets import (
    BuiltDataset,
    build_dataset,
    clinc150_dataset,
    doc2dial_dataset,
    golden_dataset,
    load_dataset_dir,
    localgovfaq_dataset,
    read_golden,
    sample_rows,
)
from eval.knowledge import KnowledgeSpec

REPO = Path(__file__).resolve().parents[1]
SUITES_DIR = Path(__file__).parent / "suites"
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"


class SuiteNotFoundError(LookupError):
    """No suite with this name (in ``eval/suites``) or path."""


class SuiteConfigError(ValueError):
    """A suite file is not valid YAML or does not match the suite schema."""


class DatasetConfig(BaseModel):
    """Which examples: a builder and its file or folder."""

    kind: Literal["golden", "localgovfaq", "clinc150", "doc2dial", "saved"]
    path: str
    split: str | None = None  # localgovfaq: dev; clinc150: test
    sample: int | None = Field(default=None, ge=1)  # a seeded random subset of this many examples
    seed: int = 0


class KnowledgeConfig(BaseModel):
    """Which knowledge base the replayed assistant answers from."""

    kind: Literal["sources", "localgovfaq", "clinc150", "doc2dial"]
    paths: list[str]
    max_tokens: int = Field(default=320, ge=16)
    overlap_tokens: int = Field(default=48, ge=0)


class SuiteConfig(BaseModel):
    """One evaluation suite."""

    name: str
    description: str = ""
    dataset: DatasetConfig
    knowledge: KnowledgeConfig | None = None  # None: the golden file's ``kb``
    # Retrieval cut-offs reported (the responder retrieves max(ks) hits).
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    # How a turn is replayed: "turn" = the message with its history (the product's own query
    # building); "last_turn" = the message alone; "history" = the whole dialogue as the message.
    query: Literal["turn", "last_turn", "history"] = "turn"
    # Answer metrics: off, on the bot's reply (answered examples), on the operator's first suggested
    # reply (``assistant.suggest``), or on the top retrieved passage.
    answers: Literal["none", "reply", "suggestion", "top_passage"] = "none"
    # Passage metrics of the answer examples (``eval.metrics.answers.CONTEXT_METRICS``): ragas'
    # whole-string context recall/precision, and term containment of the gold passages ("grounding").
    context_metrics: list[Literal["ragas", "grounding"]] = Field(
        default_factory=lambda: ["ragas", "grounding"]
    )
    target_precision: float = Field(default=0.95, gt=0.0, le=1.0)
    # The replay happens at this time with this many operators on shift, so that hand-offs are
    # escalations (a weekday morning in Tokyo, desk open) and replays are reproducible.
    now: datetime = datetime.fromisoformat("2026-11-18T10:00:00+09:00")
    on_shift: int = Field(default=1, ge=0)


def available_suites() -> list[str]:
    """Names of the suites shipped in ``eval/suites``."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> SuiteConfig:
    """A suite by name (``eval/suites/<name>.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SuiteNotFoundError(
            f"unknown suite {name_or_path!r}; available: {', '.join(available_suites())}"
        )
    try:
        return SuiteConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as exc:
        raise SuiteConfigError(f"{path}: {exc}") from exc


def resolve_path(text: str, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    """A suite path with ``{data}`` and ``{repo}`` filled in; relative paths are under the repository."""
    path = Path(text.replace("{data}", str(data_dir)).replace("{repo}", str(REPO))).expanduser()
    return path if path.is_absolute() else REPO / path


def build_suite_dataset(
    suite: SuiteConfig, data_dir: Path = DEFAULT_DATA_DIR, sample: int | None = None
) -> BuiltDataset:
    """The suite's examples (``sample`` overrides the suite's own subset size)."""
    d = suite.dataset
    path = resolve_path(d.path, data_dir)
    n = sample or d.sample
    if d.kind == "golden":
        built = golden_dataset(path)
        return built if n is None else _subset(built, n, d.seed)
    if d.kind == "localgovfaq":
        return localgovfaq_dataset(path, d.split or "dev", sample=n, seed=d.seed)
    if d.kind == "clinc150":
        return clinc150_dataset(path, d.split or "test", sample=n, seed=d.seed)
    if d.kind == "doc2dial":
        return doc2dial_dataset(path, sample=n, seed=d.seed)
    built = load_dataset_dir(path)
    return built if n is None else _subset(built, n, d.seed)


def _subset(built: BuiltDataset, n: int, seed: int) -> BuiltDataset:
    return build_dataset(built.name, sample_rows(built.dataset.to_list(), n, seed), built.dataset.features)


def suite_knowledge(suite: SuiteConfig, data_dir: Path = DEFAULT_DATA_DIR) -> KnowledgeSpec:
    """The knowledge spec of a suite (for a golden set without one: the set's own ``kb``)."""
    k = suite.knowledge
    if k is None:
        if suite.dataset.kind != "golden":
            raise SuiteConfigError(f"suite {suite.name!r} has no 'knowledge' section")
        header, _ = read_golden(resolve_path(suite.dataset.path, data_dir))
        paths = header.get("kb") or []
        return KnowledgeSpec("sources", tuple(resolve_path(str(p), data_dir) for p in paths))
    return KnowledgeSpec(
        k.kind, tuple(resolve_path(p, data_dir) for p in k.paths), k.max_tokens, k.overlap_tokens
    )

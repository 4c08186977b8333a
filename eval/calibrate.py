"""Fit the escalation confidence model on a labelled dataset (``madoguchi eval calibrate``).

The labels: for each example, whether the assistant's top hit is a source the example expects (an
example that must go to a person has no right answer). The features are the product's own
(``EntryVectors.assess`` over the suite's knowledge index, the query built as a turn builds it).
The model, its isotonic calibration and the answer threshold for a target precision come from
``assistant.confidence.fit_confidence_model`` (threshold and metrics on out-of-fold predictions);
the artifact is the JSON the assistant loads (``Settings.confidence_model``).

On an intents suite (CLINC150) the examples are the training split, cross-validated as in
``eval.escalation``: each fold's index leaves a share of the intents out, so that their utterances
play the unanswerable questions the test split has.

Fit on examples the evaluation does not use (another split, chats from another period): a model
fitted and measured on the same examples looks better than it is.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from assistant.confidence import (
    ConfidenceFeatures,
    ConfidenceModel,
    EntryVectors,
    fit_confidence_model,
    stratified_folds,
)
from assistant.conversation import build_search_query
from eval.datasets import BuiltDataset
from eval.escalation import cross_validated_features, load_intents
from eval.knowledge import build_knowledge_index
from eval.metrics.escalation import calibration_bins
from eval.plots import calibration_figure
from eval.run import turn_for
from eval.suite import DEFAULT_DATA_DIR, SuiteConfig, build_suite_dataset, suite_knowledge
from eval.track import RunRecord, git_commit
from index.embed import Embedder
from index.search import KnowledgeIndex

log = logging.getLogger(__name__)
SEARCH_K = 10


@dataclass(frozen=True)
class LabelledFeatures:
    """Confidence features with right/wrong labels and cross-validation folds, and where they came from."""

    features: tuple[ConfidenceFeatures, ...]
    correct: np.ndarray
    fold_ids: np.ndarray
    dataset: str
    fingerprint: str
    description: str


def example_features(
    index: KnowledgeIndex, rows: Sequence[Mapping[str, Any]], suite: SuiteConfig, *, progress: bool = False
) -> tuple[list[ConfidenceFeatures], list[bool]]:
    """Features of each example's search (as the turn would search) and whether its top hit is right."""
    entries = EntryVectors.from_index(index)
    feats: list[ConfidenceFeatures] = []
    labels: list[bool] = []
    for row in tqdm(rows, desc="features", disable=not progress, unit="example"):
        turn = turn_for(row, suite)
        query = build_search_query(turn.history, turn.message).text
        vector = index.embedder.embed_queries([query])
        hits = index.search(query, SEARCH_K, query_vector=vector)
        (assessed,) = entries.assess([query], [hits], vector)
        if assessed.features is None:  # nothing found: always escalated, nothing to learn
            continue
        feats.append(assessed.features)
        top = assessed.hits[0].chunk.source_id
        labels.append(not row["should_escalate"] and top in set(row["expected_sources"]))
    return feats, labels


def labelled_features(
    suite: SuiteConfig,
    embedder: Embedder,
    *,
    data_dir: Path = DEFAULT_DATA_DIR,
    dataset: BuiltDataset | None = None,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> LabelledFeatures:
    """The labelled features a suite (or ``dataset`` against the suite's knowledge) gives."""
    spec = suite_knowledge(suite, data_dir)
    if spec.kind == "clinc150" and dataset is None:
        path = spec.paths[0]
        training = cross_validated_features(
            load_intents(path), embedder, folds=folds, repeats=repeats, seed=seed, progress=progress
        )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return LabelledFeatures(
            training.features, training.correct, training.fold_ids, f"{path.name}: train+oos_train", digest,
            f"{path.name}: train+oos_train, {folds}-fold CV leaving 1/{folds} of the intents out per fold, "
            f"{repeats} intent assignment(s), seed {seed}",
        )
    built = dataset or build_suite_dataset(suite, data_dir)
    index = build_knowledge_index(spec, embedder)
    feats, labels = example_features(index, built.dataset.to_list(), suite, progress=progress)
    y = np.array(labels, dtype=bool)
    if y.all() or not y.any():
        raise ValueError(f"dataset {built.name!r} needs both right and wrong top hits to calibrate on")
    n_folds = int(min(folds, y.sum(), (~y).sum()))
    if n_folds < 2:
        raise ValueError(f"dataset {built.name!r} has too few right or wrong examples for {folds}-fold CV")
    return LabelledFeatures(
        tuple(feats), y, stratified_folds(y, n_folds, seed), built.name, built.fingerprint,
        f"{built.name} ({len(y)} examples, fingerprint {built.fingerprint[:12]}) against {spec.kind} "
        f"knowledge; {n_folds}-fold stratified CV, seed {seed}",
    )


@dataclass(frozen=True)
class Calibration:
    """A fitted model, where it was written, and the MLflow record of the fit."""

    model: ConfidenceModel
    path: Path
    record: RunRecord


def calibrate(
    data: LabelledFeatures,
    out: Path,
    *,
    suite: str,
    embedder: str,
    target_precision: float = 0.95,
    seed: int = 0,
) -> Calibration:
    """Fit, choose the threshold for ``target_precision``, write the artifact, describe the fit."""
    model = fit_confidence_model(
        data.features, data.correct, fold_ids=data.fold_ids, target_precision=target_precision,
        fitted_on=f"{data.description}; embedder {embedder}", seed=seed,
    )
    model.save(out)
    probs = model.probabilities(model.matrix(data.features))
    record = RunRecord(
        name=f"calibrate {suite}",
        params={
            "suite": suite, "dataset": data.dataset, "dataset_fingerprint": data.fingerprint,
            "target_precision": target_precision, "examples": len(data.correct),
            "right": int(data.correct.sum()), "folds": len(np.unique(data.fold_ids)), "embedder": embedder,
            "artifact": str(out), "git_commit": git_commit(), "fitted_on": model.fitted_on[:500],
        },
        metrics={"threshold": model.threshold, **{f"cv/{k}": v for k, v in model.metrics.items()}},
        tags={"suite": suite, "kind": "calibration", "dataset_fingerprint": data.fingerprint},
        figures={"plots/calibration_in_sample.png": calibration_figure(
            calibration_bins(probs, data.correct), f"{suite}: fitted model on its training data")},
        files={"confidence.json": out.read_text(encoding="utf-8")},
    )
    log.info("wrote %s: threshold %.3f, out-of-fold %s", out, model.threshold, model.metrics)
    return Calibration(model, out, record)

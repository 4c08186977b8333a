"""The escalation evaluation: its metrics, its protocol on a small intents file, and CLINC150 (quality)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval.escalation import (
    IntentsDataError,
    cross_validated_features,
    escalation_metrics,
    intent_chunks,
    load_intents,
    run_escalation_eval,
)

SMALL = Path(__file__).resolve().parents[1] / "data" / "intents_small.json"
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
METRICS = (
    "in_scope_accuracy", "answer_precision", "in_scope_coverage", "oos_recall", "auroc", "accuracy", "mcc",
)
REST = '"oos_train": [["y", "oos"]], "test": [["z", "a"]], "oos_test": [["w", "oos"]]}'


def test_metrics_count_an_escalation_as_the_prediction_oos() -> None:
    truth = ["a", "a", "b", "b", "oos", "oos"]
    predicted = ["a", "b", "b", "b", "a", "b"]
    confidence = np.array([0.9, 0.8, 0.3, 0.95, 0.85, 0.1])
    m = escalation_metrics(truth, predicted, confidence, threshold=0.5)
    # Answered: 0 (right), 1 (wrong), 3 (right), 4 (out of scope, wrong).
    assert m["in_scope_accuracy"] == 0.75
    assert m["answer_precision"] == 0.5
    assert m["in_scope_coverage"] == 0.75
    assert m["oos_recall"] == 0.5
    assert m["accuracy"] == pytest.approx(3 / 6)  # final: a, b, oos, b, a, oos
    assert (m["answered"], m["answered_wrong"], m["answered_oos"]) == (4, 2, 1)
    assert -1.0 <= m["mcc"] <= 1.0 and 0.0 <= m["auroc"] <= 1.0


def test_intents_become_one_faq_chunk_each_with_their_utterances_as_variations() -> None:
    data = load_intents(SMALL)
    chunks = intent_chunks(data.train)
    assert [c.source_id for c in chunks] == ["billing_date", "plan_change", "roaming", "sim_activation"]
    roaming = chunks[2]
    assert roaming.kind == "faq" and roaming.question == "roaming" and len(roaming.variations) == 10
    assert "can i use my phone abroad" in roaming.variations


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not valid UTF-8 JSON"),
        ('{"train": []}', "'train' is missing or empty"),
        ('{"train": [["x"]], ' + REST, "not \\[utterance, intent\\]"),
        ('{"train": [["x", "oos"]], ' + REST, "in-scope intents only"),
    ],
)
def test_malformed_intents_files_are_refused(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "intents.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(IntentsDataError, match=match):
        load_intents(path)
    with pytest.raises(IntentsDataError, match="not found"):
        load_intents(tmp_path / "missing.json")


def test_cross_validation_leaves_intents_out_so_training_has_unanswerable_questions(embedder: Any) -> None:
    data = load_intents(SMALL)
    training = cross_validated_features(data, embedder, folds=2, seed=0)
    assert len(training.features) == len(data.train) + len(data.oos_train)
    assert set(np.unique(training.fold_ids)) == {0, 1}
    # Half the intents are out of each fold's index: far more wrong answers than the 4 oos utterances.
    assert 4 + 10 <= (~training.correct).sum() <= len(training.correct) - 10


def test_run_on_a_small_intents_file(embedder: Any) -> None:
    result = run_escalation_eval(SMALL, embedder, folds=2, target_precision=0.9, progress=False)
    for key in METRICS:
        assert isinstance(result[key], float), key
    assert (result["test_in_scope"], result["test_oos"], result["intents"]) == (8, 4, 4)
    assert result["in_scope_accuracy"] >= 0.75  # four clearly different intents
    assert 0.0 <= result["threshold"] <= 1.0  # type: ignore[operator]
    assert result["answered_oos"] <= 1
    json.dumps(result)  # the CLI prints it as JSON


@pytest.mark.quality
def test_clinc150_meets_the_escalation_targets(cached_embedder: Any) -> None:
    path = SHARED_DATA / "clinc150" / "data_full.json"
    if not path.is_file():
        pytest.skip(f"CLINC150 not found at {path} (../shared/data is absent)")
    result = run_escalation_eval(path, cached_embedder, progress=False)
    assert result["answer_precision"] >= 0.95, result  # type: ignore[operator]
    assert result["oos_recall"] >= 0.85, result  # type: ignore[operator]
    assert result["in_scope_coverage"] >= 0.80, result  # type: ignore[operator]
    assert result["auroc"] > 0.903, result  # the plain nearest-neighbour baseline  # type: ignore[operator]

"""Confidence: features from hits, nearest-neighbour evidence, the fitted model and its JSON artifact."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from assistant.confidence import (
    DEFAULT_ARTIFACT,
    ConfidenceArtifactError,
    ConfidenceFeatures,
    ConfidenceModel,
    EntryVectors,
    choose_threshold,
    expected_calibration_error,
    extract_features,
    fit_confidence_model,
)
from index.documents import Chunk, SearchHit


def chunk(source: str, kind: str = "faq") -> Chunk:
    return Chunk(
        id=f"{kind}:{source}",
        source_id=source,
        kind=kind,  # type: ignore[arg-type]
        title=source,
        heading_path=(),
        text=f"{source} text",
        url=None,
        language="ja",
        content_hash="h",
        question=f"{source}?" if kind == "faq" else None,
    )


def hit(
    source: str,
    rank: int,
    score: float,
    dense: float,
    *,
    sparse: float | None = None,
    sparse_rank: int | None = None,
    question: float | None = None,
    kind: str = "faq",
) -> SearchHit:
    return SearchHit(
        chunk=chunk(source, kind),
        score=score,
        rank=rank,
        dense_score=dense,
        dense_rank=rank,
        sparse_score=sparse,
        sparse_rank=sparse_rank,
        question_score=question if question is not None else dense,
        text_score=dense - 0.05,
        answer_score=dense - 0.1,
        matched_field="question",
    )


# --- features ---------------------------------------------------------------------------------------


def test_features_read_scores_margins_and_agreement() -> None:
    hits = [
        hit("plan", 1, 0.05, 0.93, sparse=12.0, sparse_rank=1),
        hit("plan", 2, 0.04, 0.91),  # another chunk of the same source is not a competitor
        hit("sim", 3, 0.03, 0.88, sparse=6.0, sparse_rank=2),
    ]
    f = extract_features("料金プランを変えたい", hits)
    assert f.top_dense == pytest.approx(0.93)
    assert f.dense_margin == pytest.approx(0.05)
    assert f.fused_margin == pytest.approx(0.2)
    assert f.sparse_top == pytest.approx(np.log1p(12.0))
    assert (f.sparse_share, f.dense_sparse_agree, f.dense_top_sparse_rr) == (1.0, 1.0, 1.0)
    assert f.question_matched == 1.0 and f.verbatim_match == 0.0
    assert f.has_questions == 0.0  # no neighbour evidence given
    assert f.query_chars == pytest.approx(np.log1p(10))


def test_disagreeing_retrievers_and_verbatim_matches_show_in_the_features() -> None:
    hits = [
        hit("plan", 1, 0.05, 0.99, sparse=2.0, sparse_rank=2),
        hit("sim", 2, 0.04, 0.90, sparse=8.0, sparse_rank=1),
    ]
    f = extract_features("plan?", hits)
    assert f.dense_sparse_agree == 0.0
    assert f.dense_top_sparse_rr == 0.5
    assert f.sparse_share == pytest.approx(0.25)
    assert f.verbatim_match == 1.0
    with pytest.raises(ValueError, match="at least one hit"):
        extract_features("x", [])


# --- nearest-neighbour evidence and re-ranking ---------------------------------------------------------


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def entry_vectors() -> EntryVectors:
    """Two FAQ entries with ten variations each around two directions, and one manual chunk."""
    rng = np.random.default_rng(0)
    a = [unit([1, 0.1 * x, 0.1 * y]) for x, y in rng.normal(size=(10, 2))]
    b = [unit([0.1 * x, 1, 0.1 * y]) for x, y in rng.normal(size=(10, 2))]
    owners = np.array([0] * 10 + [1] * 10)
    return EntryVectors(np.stack(a + b), owners, ["faq:a", "faq:b", "manual:m"])


def test_evidence_counts_votes_and_centroid_for_the_top_entry() -> None:
    ev = entry_vectors()
    q = unit([1, 0.05, 0])[None, :]
    (near_a,) = ev.evidence(q, [0], [[hit("a", 1, 0.05, 0.99), hit("b", 2, 0.04, 0.2)]])
    assert near_a.votes == 1.0 and near_a.weighted_votes == pytest.approx(1.0)
    assert near_a.vote_winner_agrees == 1.0 and near_a.centroid_winner_agrees == 1.0
    assert near_a.centroid > 0.99 and near_a.centroid_margin > 0.5
    assert near_a.entry_margin > 0.5
    (wrong,) = ev.evidence(q, [1], [[hit("b", 1, 0.05, 0.3)]])
    assert wrong.votes == 0.0 and wrong.vote_winner_agrees == 0.0 and wrong.centroid_margin < 0
    (manual,) = ev.evidence(q, [2], [[hit("m", 1, 0.05, 0.9, kind="manual")]])
    assert manual.has_questions == 0.0 and manual.votes == 0.0


def test_rerank_puts_the_entry_its_variations_vote_for_first() -> None:
    ev = entry_vectors()
    q = unit([0.1, 1, 0])
    fused = [hit("a", 1, 0.05, 0.90), hit("b", 2, 0.04, 0.89)]
    assert [h.chunk.source_id for h in ev.rerank(fused, q)] == ["b", "a"]
    # A manual passage on top stays on top.
    manual_first = [hit("m", 1, 0.05, 0.9, kind="manual"), *fused]
    assert ev.rerank(manual_first, q)[0].chunk.source_id == "m"


def test_a_verbatim_question_match_wins_over_the_fused_order() -> None:
    small = EntryVectors(np.stack([unit([1, 0, 0]), unit([0, 1, 0])]), np.array([0, 1]), ["faq:a", "faq:b"])
    fused = [hit("a", 1, 0.05, 0.95), hit("b", 2, 0.04, 0.99)]
    assert small.rerank(fused, unit([0, 1, 0]))[0].chunk.source_id == "b"
    close = [hit("a", 1, 0.05, 0.95), hit("b", 2, 0.04, 0.96)]  # entries too small to vote: fused order
    assert small.rerank(close, unit([0, 1, 0]))[0].chunk.source_id == "a"


# --- thresholds ----------------------------------------------------------------------------------------


def test_choose_threshold_takes_the_lowest_threshold_meeting_the_precision() -> None:
    probs = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    assert choose_threshold(probs, labels, 1.0) == 0.8
    assert choose_threshold(probs, labels, 0.8) == 0.6  # 4 right of 5 answered
    assert choose_threshold(probs, labels, 0.5) == 0.5


def test_choose_threshold_treats_ties_as_one_and_reports_an_unreachable_target() -> None:
    probs = np.array([0.9, 0.9, 0.5])
    labels = np.array([1, 0, 1], dtype=bool)
    assert choose_threshold(probs, labels, 0.9) == 1.0  # 0.9 would answer a wrong one too
    with pytest.raises(ValueError, match="1.5"):
        choose_threshold(probs, labels, 1.5)
    with pytest.raises(ValueError, match="shapes"):
        choose_threshold(probs, labels[:2], 0.9)


# --- the model -----------------------------------------------------------------------------------------


def synthetic(n: int, seed: int) -> tuple[list[ConfidenceFeatures], np.ndarray]:
    """Answers are right more often when the question similarity and its margin are high."""
    rng = np.random.default_rng(seed)
    zero = ConfidenceFeatures(**{f.name: 0.0 for f in fields(ConfidenceFeatures)})
    feats, labels = [], []
    for _ in range(n):
        sim, margin, chars = rng.uniform(0.8, 1.0), rng.uniform(0, 0.1), rng.uniform(1, 4)
        p_right = 1 / (1 + np.exp(-(60 * (sim - 0.9) + 40 * (margin - 0.05))))
        feats.append(
            replace(
                zero,
                top_question=sim,
                question_margin=margin,
                query_chars=chars,
                top_dense=sim + rng.normal(0, 0.01),
            )
        )
        labels.append(bool(rng.uniform() < p_right))
    return feats, np.array(labels)


def test_fitted_model_ranks_better_evidence_higher_and_meets_its_precision() -> None:
    feats, labels = synthetic(1500, seed=1)
    model = fit_confidence_model(feats, labels, target_precision=0.9, fitted_on="synthetic")
    assert model.metrics["auroc"] > 0.85
    assert model.metrics["answer_precision"] >= 0.9
    assert 0.0 < model.threshold < 1.0
    weak = replace(feats[0], top_question=0.82, top_dense=0.82)
    strong = replace(feats[0], top_question=0.99, top_dense=0.99)
    assert model.probability(strong) > model.probability(weak)
    # Sign constraints: evidence features never count against the answer.
    for name, coef, sign in zip(model.feature_names, model.coef, ConfidenceFeatures.signs(), strict=True):
        assert sign == 0 or coef >= 0.0, name
    test_feats, test_labels = synthetic(1500, seed=2)
    probs = model.probabilities(model.matrix(test_feats))
    answered = probs >= model.threshold
    assert test_labels[answered].mean() >= 0.87  # held-out precision near the 0.9 target
    assert expected_calibration_error(probs, test_labels) < 0.06


def test_artifact_round_trips_through_json(tmp_path: Path) -> None:
    feats, labels = synthetic(400, seed=3)
    names = ("top_question", "question_margin", "query_chars")
    model = fit_confidence_model(feats, labels, feature_names=names, isotonic=False, fitted_on="synthetic")
    path = tmp_path / "conf.json"
    model.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "madoguchi-confidence" and data["version"] == 1
    assert data["feature_names"] == list(names) and data["isotonic"] is None
    loaded = ConfidenceModel.load(path)
    assert loaded == model
    assert loaded.probability(feats[0]) == pytest.approx(model.probability(feats[0]))


def test_bad_artifacts_are_refused(tmp_path: Path) -> None:
    good = ConfidenceModel.load().to_json()
    for broken, match in [
        ({**good, "version": 99}, "version 99"),
        ({**good, "feature_names": ["no_such_feature", *good["feature_names"][1:]]}, "no_such_feature"),
        ({k: v for k, v in good.items() if k != "threshold"}, "threshold"),
    ]:
        with pytest.raises(ConfidenceArtifactError, match=match):
            ConfidenceModel.from_json(broken)
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfidenceArtifactError, match="bad.json"):
        ConfidenceModel.load(path)


def test_the_shipped_default_artifact_is_fitted_for_the_target_precision() -> None:
    model = ConfidenceModel.load()
    assert DEFAULT_ARTIFACT.name == "confidence_default.json"
    assert model.target_precision == 0.95
    assert model.metrics["answer_precision"] >= 0.95
    assert 0.0 < model.threshold < 1.0
    assert model.feature_names == ConfidenceFeatures.names()
    assert "demo" in model.fitted_on

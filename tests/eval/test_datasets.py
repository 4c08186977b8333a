"""Evaluation datasets: explicit features, stable fingerprints, golden YAML, benchmark file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Value

from eval.datasets import (
    EXAMPLE_FEATURES,
    DatasetError,
    build_dataset,
    clinc150_dataset,
    doc2dial_dataset,
    example,
    golden_dataset,
    load_dataset_dir,
    localgovfaq_dataset,
    save_dataset,
)
from index.ingest import load_sources

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "eval" / "golden" / "demo.yaml"
INTENTS = REPO / "tests" / "data" / "intents_small.json"


def test_golden_set_names_only_entries_of_the_demo_kb() -> None:
    built = golden_dataset(GOLDEN)
    assert built.dataset.features == EXAMPLE_FEATURES
    assert built.dataset.features["should_escalate"] == Value("bool")
    rows = built.dataset.to_list()
    assert len(rows) >= 30
    known = {d.id for d in load_sources([REPO / "demo" / "kb"], root=REPO / "demo" / "kb")}
    unknown = {s for r in rows for s in r["expected_sources"]} - known
    assert unknown == set()
    langs = {r["language"] for r in rows}
    assert langs == {"ja", "en"}
    assert sum(r["should_escalate"] for r in rows) >= 5
    followup = next(r for r in rows if r["history"])
    assert followup["history"][0]["role"] == "customer"


def test_fingerprints_are_stable_and_change_with_the_content(tmp_path: Path) -> None:
    first, second = golden_dataset(GOLDEN), golden_dataset(GOLDEN)
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) == 64
    save_dataset(first, tmp_path / "golden")
    loaded = load_dataset_dir(tmp_path / "golden")
    assert loaded.fingerprint == first.fingerprint and loaded.dataset.to_list() == first.dataset.to_list()
    rows = first.dataset.to_list()
    rows[0] = {**rows[0], "question": rows[0]["question"] + "?"}
    assert build_dataset("golden", rows).fingerprint != first.fingerprint
    with pytest.raises(DatasetError, match="no saved Madoguchi dataset"):
        load_dataset_dir(tmp_path / "missing")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("examples: []", "non-empty 'examples'"),
        ("examples: [{id: a}]", "needs an 'id' and a non-empty 'q'"),
        ("examples: [{id: a, q: x}]", "either 'expect'"),
        ("examples: [{id: a, q: x, expect: [e1], escalate: true}]", "either 'expect'"),
        ("examples: [{id: a, q: x, expect: [e]}, {id: a, q: y, expect: [e]}]", "more than once"),
        ("examples: [", "not valid YAML"),
    ],
)
def test_bad_golden_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        golden_dataset(path)
    with pytest.raises(DatasetError, match="not found"):
        golden_dataset(tmp_path / "absent.yaml")


def test_benchmark_formats(tmp_path: Path) -> None:
    (tmp_path / "queries.dev.json").write_text(json.dumps({"q1": "住民票", "q2": "ごみ"}), encoding="utf-8")
    qrels = {"q1": {"d2": 1, "d1": 2, "d3": 0}, "q2": {"d3": 0}}
    (tmp_path / "qrels.dev.json").write_text(json.dumps(qrels), encoding="utf-8")
    lg = localgovfaq_dataset(tmp_path).dataset.to_list()
    assert lg[0]["expected_sources"] == ["d1", "d2"] and lg[0]["expected_grades"] == [2, 1]
    assert lg[1]["should_escalate"] and lg[1]["expected_sources"] == []

    clinc = clinc150_dataset(INTENTS).dataset.to_list()
    oos = [r for r in clinc if r["should_escalate"]]
    assert len(clinc) == 12 and len(oos) == 4 and all(r["group"] == "oos" for r in oos)
    assert len(clinc150_dataset(INTENTS, sample=5, seed=1)) == 5
    assert (
        clinc150_dataset(INTENTS, sample=5, seed=1).fingerprint
        == clinc150_dataset(INTENTS, sample=5, seed=1).fingerprint
    )

    turn = {
        "id": "d_3",
        "dial_id": "d",
        "agent_turn_id": 3,
        "domain": "dmv",
        "gold_doc_id": "Doc#1",
        "history_recent_first": ["user:and then?", "agent:Renew online.", "user:My license expired"],
        "last_user_utterance": "and then?",
        "gold_grounding_text": "Renew at the office. ",
        "gold_answer_start": 0,
        "gold_span_ids": ["1"],
    }
    (tmp_path / "turns.jsonl").write_text(json.dumps(turn) + "\n", encoding="utf-8")
    (row,) = doc2dial_dataset(tmp_path).dataset.to_list()
    assert row["history"] == [
        {"role": "customer", "text": "My license expired"},
        {"role": "operator", "text": "Renew online."},
    ]
    assert row["question"] == "and then?" and row["reference_answer"] == "Renew at the office."
    assert row["expected_sources"] == ["Doc#1"] and row["group"] == "d"


def test_example_rows_validate_their_grades() -> None:
    with pytest.raises(ValueError, match="2 grades for 1"):
        example("x", "q", "golden", expected_sources=["a"], expected_grades=[1, 2])


@pytest.mark.quality
def test_public_benchmarks_load(shared_data: Path) -> None:
    assert len(localgovfaq_dataset(shared_data / "localgovfaq")) == 367
    assert len(clinc150_dataset(shared_data / "clinc150" / "data_full.json")) == 5500
    d2d = doc2dial_dataset(shared_data / "doc2dial", sample=200)
    assert len(d2d) == 200 and all(r["expected_sources"] for r in d2d.dataset.to_list())

"""MLflow tracking on a real sqlite:/// store in tmp_path: runs, parameters, metrics, artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.metrics.escalation import calibration_bins, risk_coverage_curve
from eval.plots import calibration_figure, risk_coverage_figure
from eval.track import (
    RunNotFoundError,
    RunRecord,
    TrackingConfig,
    get_run,
    git_commit,
    list_artifacts,
    log_run,
    metric_key,
)


def test_metric_keys_are_names_mlflow_accepts() -> None:
    assert metric_key("recall@10") == "recall_at_10"
    assert metric_key("reason/sensitive_topic:legal/count") == "reason/sensitive_topic:legal/count"
    assert metric_key("answer/bleu (terms)") == "answer/bleu _terms_"


def test_a_run_keeps_params_metrics_table_and_png_plots_beside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns of the working directory
    home = tmp_path / "home"
    config = TrackingConfig.default(home)
    assert config.uri == f"sqlite:///{(home / 'mlflow.db').resolve().as_posix()}"
    p, y = [0.9, 0.6, 0.3], [True, False, False]
    record = RunRecord(
        name="golden",
        params={"embedder": "e5", "fusion": {"rrf_k": 60}, "git_commit": git_commit()},
        metrics={"recall@10": 0.75, "ece": 0.1, "auroc": float("nan")},
        tags={"suite": "golden"},
        table=[{"id": "a", "reasons": ["low_confidence"], "confidence": 0.9}, {"id": "b", "confidence": 0.3}],
        figures={
            "plots/risk_coverage.png": risk_coverage_figure(risk_coverage_curve(p, y), "rc", 0.33),
            "plots/calibration.png": calibration_figure(calibration_bins(p, y), "cal"),
        },
        files={"suite.json": "{}"},
    )
    run_id = log_run(config, record)
    run = get_run(config.uri, run_id)
    assert run.name == "golden"
    assert run.metrics == {"recall_at_10": 0.75, "ece": 0.1}  # nan left out, and named in a tag
    assert run.tags["nonfinite_metrics"] == "auroc"
    assert run.params["fusion"] == '{"rrf_k": 60}' and run.params["embedder"] == "e5"
    assert set(list_artifacts(config.uri, run_id)) == {
        "examples.json",
        "plots/calibration.png",
        "plots/risk_coverage.png",
        "suite.json",
    }
    png = home / "mlartifacts" / run_id / "artifacts" / "plots" / "calibration.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "mlruns").exists()
    second = log_run(config, RunRecord(name="again", params={}, metrics={"x": 1.0}))
    assert second != run_id and get_run(config.uri, second).metrics == {"x": 1.0}


def test_an_unknown_run_id_is_a_precise_error(tmp_path: Path) -> None:
    config = TrackingConfig.default(tmp_path)
    log_run(config, RunRecord(name="x", params={}, metrics={"a": 1.0}))
    with pytest.raises(RunNotFoundError, match="no run 'deadbeef'"):
        get_run(config.uri, "deadbeef")

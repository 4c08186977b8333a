"""`madoguchi eval compare`: deltas, directions, tolerances, and exit codes a CI gate can use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from assistant.cli import app
from eval.compare import compare_metrics, direction, regressions
from eval.track import RunRecord, TrackingConfig, log_run


@pytest.mark.parametrize(
    ("metric", "better"),
    [
        ("recall_at_10", "higher"),
        ("ndcg_at_10", "higher"),
        ("auroc", "higher"),
        ("answer_precision", "higher"),
        ("coverage_at_precision_0.95", "higher"),
        ("answer/rouge_l", "higher"),
        ("cv/auroc", "higher"),
        ("ece", "lower"),
        ("cv/ece", "lower"),
        ("brier", "lower"),
        ("aurc", "lower"),
        ("latency_ms_p95", "lower"),
        ("failures", "lower"),
        ("must_escalate_answered", "lower"),
        ("examples_per_second", "higher"),
        ("reason/low_confidence/precision", "higher"),
        ("reason/low_confidence/count", None),
        ("oracle_threshold_0.95", None),
        ("answered_share", None),
        ("examples", None),
    ],
)
def test_each_metric_knows_which_way_is_better(metric: str, better: str | None) -> None:
    assert direction(metric) == better


def test_tolerances_absolute_for_rates_relative_for_amounts() -> None:
    a = {"recall_at_10": 0.80, "ece": 0.10, "latency_ms_p50": 100.0, "examples": 50.0, "auroc": 0.9}
    b = {"recall_at_10": 0.795, "ece": 0.13, "latency_ms_p50": 120.0, "examples": 10.0, "new": 1.0}
    by_name = {d.name: d for d in compare_metrics(a, b, tolerance=0.01, relative_tolerance=0.25)}
    assert by_name["recall_at_10"].status == "same"  # -0.005 is within 0.01
    assert by_name["ece"].status == "regressed" and by_name["ece"].delta == pytest.approx(0.03)
    assert by_name["latency_ms_p50"].status == "same"  # +20% is within 25%
    assert by_name["examples"].status == "info"
    assert by_name["auroc"].status == "missing" and by_name["new"].status == "missing"
    assert [d.name for d in regressions(list(by_name.values()))] == ["ece"]
    only = compare_metrics(a, b, only=["recall_*"])
    assert regressions(only) == []
    improved = compare_metrics({"aurc": 0.3}, {"aurc": 0.2})
    assert improved[0].status == "improved"


def _cli(*args: str) -> Result:
    """The real ``madoguchi`` app, in process."""
    return CliRunner().invoke(app, ["eval", *args])


def test_cli_exit_codes(tmp_path: Path) -> None:
    config = TrackingConfig.default(tmp_path)
    base = log_run(config, RunRecord("base", {}, {"recall@10": 0.80, "ece": 0.05}))
    same = log_run(config, RunRecord("same", {}, {"recall@10": 0.805, "ece": 0.05}))
    worse = log_run(config, RunRecord("worse", {}, {"recall@10": 0.70, "ece": 0.05}))
    uri = ["--tracking-uri", config.uri]
    ok = _cli("compare", base, same, *uri, "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["regressions"] == []
    bad = _cli("compare", base, worse, *uri)
    assert bad.exit_code == 1, bad.stderr
    assert "recall_at_10" in bad.stdout and "regressed" in bad.stderr
    loose = _cli("compare", base, worse, *uri, "--tolerance", "0.2")
    assert loose.exit_code == 0, loose.stderr
    missing = _cli("compare", base, "nosuchrun", *uri)
    assert missing.exit_code == 2 and "no run 'nosuchrun'" in missing.stderr

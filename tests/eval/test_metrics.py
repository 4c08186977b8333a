"""Escalation and end-to-end metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eval.metrics.e2e import (
    ConversationOutcome,
    automation_rate,
    csat_by_path,
    e2e_report,
    latency_percentiles,
    verified_resolution_rate,
)
from eval.metrics.escalation import (
    aurc,
    auroc,
    brier_score,
    calibration_bins,
    coverage_at_precision,
    escalation_reasons,
    escalation_summary,
    expected_calibration_error,
    risk_coverage_curve,
)

# Most confident first: right, wrong, right, wrong.
P = [0.9, 0.8, 0.7, 0.2]
Y = [True, False, True, False]


def test_ranking_and_calibration_by_hand() -> None:
    # Positive/negative pairs ordered correctly: (0.9>0.8), (0.9>0.2), (0.7>0.2); not (0.7>0.8).
    assert auroc(P, Y) == pytest.approx(3 / 4)
    assert brier_score(P, Y) == pytest.approx((0.1**2 + 0.8**2 + 0.3**2 + 0.2**2) / 4)
    assert np.isnan(auroc([0.5, 0.6], [True, True]))
    bins = calibration_bins(P, Y, bins=2)  # [0, .5): {0.2 wrong}; [.5, 1]: {.9 R, .8 W, .7 R}
    assert bins.counts == (1, 3)
    assert bins.accuracy == pytest.approx((0.0, 2 / 3))
    assert bins.mean_confidence == pytest.approx((0.2, 0.8))
    ece = (1 * abs(0.0 - 0.2) + 3 * abs(2 / 3 - 0.8)) / 4
    assert expected_calibration_error(np.array(P), np.array(Y), bins=2) == pytest.approx(ece)


def test_risk_coverage_and_its_area() -> None:
    curve = risk_coverage_curve(P, Y)
    assert curve.coverage == pytest.approx((0.25, 0.5, 0.75, 1.0))
    assert curve.risk == pytest.approx((0.0, 0.5, 1 / 3, 0.5))
    assert aurc(P, Y) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # Ties enter together, so the order of tied examples cannot change the area.
    tied = risk_coverage_curve([0.5, 0.5, 0.1], [False, True, False])
    assert tied.coverage == pytest.approx((2 / 3, 1.0)) and tied.risk == pytest.approx((0.5, 2 / 3))
    assert aurc([0.5, 0.5, 0.1], [False, True, False]) == aurc([0.5, 0.5, 0.1], [True, False, False])
    assert aurc([0.9, 0.1], [True, False]) == pytest.approx(0.5 * (0.0 + 0.5))


def test_coverage_at_a_target_precision() -> None:
    # Answering the top 3 gives precision 2/3; the top 1 gives 1.0; the top 2 and 4 give 0.5.
    assert coverage_at_precision(P, Y, 0.6) == (pytest.approx(0.75), pytest.approx(0.7))
    assert coverage_at_precision(P, Y, 0.9) == (pytest.approx(0.25), pytest.approx(0.9))
    assert coverage_at_precision([0.5], [False], 0.9)[0] == 0.0


def test_escalations_by_reason() -> None:
    reasons = [("low_confidence",), ("human_requested", "low_confidence"), (), ("sensitive_topic:legal",)]
    escalated = [True, True, False, True]
    should = [False, True, False, True]
    expected = [None, "human_requested", None, "sensitive_topic:legal"]
    stats = escalation_reasons(reasons, escalated, should, expected)
    assert stats["low_confidence"].count == 2 and stats["low_confidence"].precision == 0.5
    assert stats["low_confidence"].recall is None  # no example names it as its expected reason
    assert stats["human_requested"].precision == 1.0 and stats["human_requested"].recall == 1.0
    assert stats["sensitive_topic:legal"].count == 1
    without = escalation_reasons(reasons, escalated, should)
    assert without["human_requested"].recall is None
    with pytest.raises(ValueError, match="same length"):
        escalation_reasons(reasons, escalated[:2], should)


def test_escalation_summary_with_labels() -> None:
    answered = [True, True, False, False]
    summary = escalation_summary(
        P,
        Y,
        answered,
        should_escalate=[False, False, False, True],
        escalated=[False, False, True, True],
        target_precision=0.6,
    )
    assert summary["answered_share"] == 0.5 and summary["answer_precision"] == 0.5
    assert summary["right_answered_share"] == 0.5
    assert summary["coverage_at_precision_0.6"] == pytest.approx(0.75)
    assert summary["escalation_precision"] == 0.5 and summary["escalation_recall"] == 1.0
    assert summary["must_escalate_answered"] == 0.0


def _conv(i: int, **kw: object) -> ConversationOutcome:
    return ConversationOutcome(conversation_id=str(i), **kw)  # type: ignore[arg-type]


def test_end_to_end_metrics_are_strict() -> None:
    convs = [
        _conv(1, closed=True, path="bot", outcome="resolved", confirmed=True, csat=5.0),
        _conv(2, closed=True, path="bot", outcome="resolved", confirmed=None),  # went quiet: not verified
        _conv(3, closed=True, path="bot", outcome="resolved", confirmed=False, csat=2.0),
        _conv(4, closed=True, path="operator", outcome="resolved", confirmed=True, csat=4.0),
        _conv(5, closed=False, path="bot"),  # still open: counted nowhere
    ]
    assert automation_rate(convs) == 3 / 4
    assert verified_resolution_rate(convs) == 1 / 4
    assert csat_by_path(convs) == {"bot": (3.5, 2), "operator": (4.0, 1)}
    report = e2e_report(convs)
    assert report["closed"] == 4 and report["csat_bot"] == 3.5 and report["csat_operator_n"] == 1
    assert np.isnan(automation_rate([_conv(9, closed=False, path="bot")]))


def test_latency_percentiles() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    out = latency_percentiles(values, (50, 90))
    assert out == {"p50": 30.0, "p90": pytest.approx(40 + 0.6 * 60)}
    assert np.isnan(latency_percentiles([])["p50"])
    with pytest.raises(ValueError, match="percentiles"):
        latency_percentiles(values, (150,))

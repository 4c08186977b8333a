"""Escalation metrics: how well the confidence ranks and calibrates answers, and how escalations go.

Inputs are per-example arrays: the calibrated confidence of the bot's answer, whether that answer
(the top hit) was right, whether the bot answered, why it escalated, and (when the data says so)
whether the example should have gone to a person and why.

The calibration error, the threshold rule and the out-of-fold report live with the confidence model
(``assistant.confidence``) and are reused here rather than copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from assistant.confidence import choose_threshold, expected_calibration_error

__all__ = [
    "CalibrationBins",
    "ReasonStats",
    "RiskCoverage",
    "aurc",
    "auroc",
    "brier_score",
    "calibration_bins",
    "coverage_at_precision",
    "escalation_reasons",
    "escalation_summary",
    "expected_calibration_error",
    "risk_coverage_curve",
]


def _arrays(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"confidence {p.shape} and labels {y.shape} must be equal 1-d shapes")
    return p, y


def auroc(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve of the confidence as a detector of right answers (nan: one class only)."""
    p, y = _arrays(confidence, correct)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def brier_score(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> float:
    """Mean squared difference between the confidence and the 0/1 outcome."""
    p, y = _arrays(confidence, correct)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")


@dataclass(frozen=True)
class CalibrationBins:
    """A reliability diagram: per equal-width confidence bin, its count, mean confidence and accuracy."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean_confidence: tuple[float, ...]  # nan for an empty bin
    accuracy: tuple[float, ...]  # nan for an empty bin


def calibration_bins(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, bins: int = 10
) -> CalibrationBins:
    """The bins ``expected_calibration_error`` averages over (same binning: the last bin holds 1.0)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins!r}")
    p, y = _arrays(confidence, correct)
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts, conf, acc = [], [], []
    for b in range(bins):
        sel = which == b
        counts.append(int(sel.sum()))
        conf.append(float(p[sel].mean()) if sel.any() else float("nan"))
        acc.append(float(y[sel].mean()) if sel.any() else float("nan"))
    edges = tuple(float(e) for e in np.linspace(0.0, 1.0, bins + 1))
    return CalibrationBins(edges, tuple(counts), tuple(conf), tuple(acc))


@dataclass(frozen=True)
class RiskCoverage:
    """Selective answering: answer the ``coverage`` share of most confident examples, with ``risk`` errors.

    Points are taken after each distinct confidence value (ties enter together), most confident first.
    """

    coverage: tuple[float, ...]
    risk: tuple[float, ...]
    thresholds: tuple[float, ...]


def risk_coverage_curve(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray
) -> RiskCoverage:
    """The risk (error rate among answered) at every coverage a threshold on the confidence can give."""
    p, y = _arrays(confidence, correct)
    if len(p) == 0:
        return RiskCoverage((), (), ())
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    errors = np.cumsum(~ys)
    n_answered = np.arange(1, len(ps) + 1)
    last_of_tie = np.r_[ps[1:] != ps[:-1], True]
    idx = np.flatnonzero(last_of_tie)
    return RiskCoverage(
        coverage=tuple(float(v) for v in n_answered[idx] / len(ps)),
        risk=tuple(float(v) for v in errors[idx] / n_answered[idx]),
        thresholds=tuple(float(v) for v in ps[idx]),
    )


def aurc(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean risk over coverages 1/n ... n/n (lower is better).

    Ties share the risk of their group, so the value does not depend on the order of tied examples.
    """
    p, y = _arrays(confidence, correct)
    if len(p) == 0:
        return float("nan")
    curve = risk_coverage_curve(p, y)
    counts = np.diff(np.r_[0, np.round(np.asarray(curve.coverage) * len(p))])
    return float(np.sum(counts * np.asarray(curve.risk)) / len(p))


def coverage_at_precision(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, target: float
) -> tuple[float, float]:
    """(coverage, threshold): the most examples answerable with answer precision >= ``target``.

    An oracle on this data (the threshold is chosen on the same examples): it measures how well the
    confidence ranks, not the product's own threshold. Coverage 0 when no threshold reaches the target.
    """
    p, y = _arrays(confidence, correct)
    if len(p) == 0:
        return 0.0, 1.0
    threshold = choose_threshold(p, y, target)
    answered = p >= threshold
    if not answered.any() or y[answered].mean() < target:
        return 0.0, threshold
    return float(answered.mean()), threshold


@dataclass(frozen=True)
class ReasonStats:
    """Escalations that cite one reason: how many, how many were warranted, and the recall.

    ``recall``: of the examples whose expected reason is this one, the share escalated citing it
    (None when the data names no expected reasons).
    """

    count: int
    precision: float
    recall: float | None


def escalation_reasons(
    reasons: Sequence[Sequence[str]],
    escalated: Sequence[bool],
    should_escalate: Sequence[bool],
    expected_reasons: Sequence[str | None] | None = None,
) -> dict[str, ReasonStats]:
    """Precision (and recall, given expected reasons) of escalations, by the reason they cite.

    A reason with a suffix (``sensitive_topic:legal``) is counted under its full code; precision is
    the share of the escalations citing it that the data says should have been escalated.
    """
    n = len(reasons)
    if not (len(escalated) == len(should_escalate) == n):
        raise ValueError("reasons, escalated and should_escalate must have the same length")
    if expected_reasons is not None and len(expected_reasons) != n:
        raise ValueError("expected_reasons must have the same length as reasons")
    cited: dict[str, list[int]] = {}
    for i, (rs, esc) in enumerate(zip(reasons, escalated, strict=True)):
        if esc:
            for r in dict.fromkeys(rs):
                cited.setdefault(r, []).append(i)
    expected: dict[str, list[int]] = {}
    for i, r in enumerate(expected_reasons or ()):
        if r:
            expected.setdefault(r, []).append(i)
    out: dict[str, ReasonStats] = {}
    for r in sorted(set(cited) | set(expected)):
        rows = cited.get(r, [])
        precision = float(np.mean([should_escalate[i] for i in rows])) if rows else float("nan")
        recall = None
        if expected_reasons is not None:
            want = expected.get(r, [])
            recall = float(np.mean([escalated[i] and r in reasons[i] for i in want])) if want else None
        out[r] = ReasonStats(len(rows), precision, recall)
    return out


def escalation_summary(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    answered: Sequence[bool] | np.ndarray,
    *,
    should_escalate: Sequence[bool] | np.ndarray | None = None,
    escalated: Sequence[bool] | np.ndarray | None = None,
    target_precision: float = 0.95,
) -> dict[str, float]:
    """The escalation metrics of a run: ranking, calibration, the product's answers, coverage, AURC."""
    p, y = _arrays(confidence, correct)
    a = np.asarray(answered, dtype=bool)
    coverage, threshold = coverage_at_precision(p, y, target_precision)
    out = {
        "auroc": auroc(p, y),
        "ece": expected_calibration_error(p, y),
        "brier": brier_score(p, y),
        "aurc": aurc(p, y),
        "answered_share": float(a.mean()) if len(a) else float("nan"),
        "answer_precision": float(y[a].mean()) if a.any() else float("nan"),
        "right_answered_share": float(a[y].mean()) if y.any() else float("nan"),
        f"coverage_at_precision_{target_precision:g}": coverage,
        f"oracle_threshold_{target_precision:g}": threshold,
    }
    if should_escalate is not None and escalated is not None:
        want = np.asarray(should_escalate, dtype=bool)
        esc = np.asarray(escalated, dtype=bool)
        out["escalation_precision"] = float(want[esc].mean()) if esc.any() else float("nan")
        out["escalation_recall"] = float(esc[want].mean()) if want.any() else float("nan")
        # Of the examples that must go to a person, the share the bot answered instead.
        out["must_escalate_answered"] = float(a[want].mean()) if want.any() else float("nan")
    return out

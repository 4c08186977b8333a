"""Compare two evaluation runs metric by metric, knowing which way is better (a CI gate).

A rate or score (recall, AUROC, precision, ECE, ...) regresses when it moves the wrong way by more
than the absolute ``tolerance``; an amount (latency, throughput) when it moves the wrong way by more
than ``relative_tolerance`` of run A's value. Metrics of unknown direction (counts, thresholds,
shares answered) are shown but never gate.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]
Status = Literal["regressed", "improved", "same", "info", "missing"]

# First match wins: the lower-is-better names come first ("must_escalate_answered" is not a coverage).
_RULES: tuple[tuple[str, Direction | None], ...] = (
    (r"(^|/)(ece|brier|aurc)$", "lower"),
    (r"^latency_ms_", "lower"),
    (r"(^|/)(failures|seconds)$", "lower"),
    (r"must_escalate_answered|answered_wrong|answered_oos", "lower"),
    (r"^(recall|ndcg|mrr|hit)_at_\d+$", "higher"),
    (r"(^|/)count$|threshold|answered_share|^examples$|queries$|_n$", None),  # descriptive only
    (r"auroc|precision|recall|coverage|accuracy|mcc|answered_right|right_answered_share", "higher"),
    (r"automation_rate|verified_resolution_rate|^csat_|^answer/|examples_per_second", "higher"),
)
_AMOUNTS = re.compile(r"^latency_ms_|examples_per_second|seconds$")


def direction(metric: str) -> Direction | None:
    """Whether higher or lower values are better, or None when the metric does not gate."""
    for pattern, which in _RULES:
        if re.search(pattern, metric):
            return which
    return None


@dataclass(frozen=True)
class MetricDelta:
    """One metric in both runs."""

    name: str
    a: float | None
    b: float | None
    better: Direction | None
    status: Status

    @property
    def delta(self) -> float | None:
        """B minus A (None when either is missing)."""
        return None if self.a is None or self.b is None else self.b - self.a


def _status(a: float, b: float, better: Direction | None, allowed: float) -> Status:
    if better is None:
        return "info"
    if math.isnan(a) or math.isnan(b):
        return "info"
    worse = (a - b) if better == "higher" else (b - a)
    if worse > allowed:
        return "regressed"
    if -worse > allowed:
        return "improved"
    return "same"


def compare_metrics(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    tolerance: float = 0.01,
    relative_tolerance: float = 0.25,
    only: Sequence[str] = (),
) -> list[MetricDelta]:
    """Every metric of either run; ``only`` (glob patterns) limits which metrics may gate."""
    if tolerance < 0 or relative_tolerance < 0:
        raise ValueError(f"tolerances must be >= 0, got {tolerance!r} and {relative_tolerance!r}")
    out = []
    for name in sorted(set(a) | set(b)):
        better = direction(name)
        if only and not any(fnmatch.fnmatch(name, p) for p in only):
            better = None
        va, vb = a.get(name), b.get(name)
        if va is None or vb is None:
            out.append(MetricDelta(name, va, vb, better, "missing"))
            continue
        allowed = relative_tolerance * abs(va) if _AMOUNTS.search(name) else tolerance
        out.append(MetricDelta(name, va, vb, better, _status(va, vb, better, allowed)))
    return out


def regressions(deltas: Sequence[MetricDelta]) -> list[MetricDelta]:
    """The metrics that got worse beyond the tolerance."""
    return [d for d in deltas if d.status == "regressed"]

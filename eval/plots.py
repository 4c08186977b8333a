"""PNG plots of an evaluation run: the risk-coverage curve and the reliability (calibration) diagram.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no global backend state), so they
render on a server without a display and in threads.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.metrics.escalation import CalibrationBins, RiskCoverage


def _figure() -> Figure:
    fig = Figure(figsize=(5.0, 4.0), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def risk_coverage_figure(curve: RiskCoverage, title: str, threshold_coverage: float | None = None) -> Figure:
    """Risk (error rate of the answers) against coverage (share answered), most confident first."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(curve.coverage, curve.risk, drawstyle="steps-post", color="tab:blue", label="risk")
    if threshold_coverage is not None and math.isfinite(threshold_coverage):
        ax.axvline(threshold_coverage, color="tab:red", linestyle="--", label="product threshold")
        ax.legend(loc="upper left")
    ax.set(
        xlim=(0, 1),
        ylim=(0, max([0.05, *curve.risk]) * 1.05),
        xlabel="coverage (share answered)",
        ylabel="risk (share of answers wrong)",
        title=title,
    )
    ax.grid(alpha=0.3)
    return fig


def calibration_figure(bins: CalibrationBins, title: str) -> Figure:
    """Accuracy per confidence bin against the diagonal, with the bin sizes underneath."""
    fig = _figure()
    ax = fig.add_subplot()
    centers = [(a + b) / 2 for a, b in zip(bins.edges[:-1], bins.edges[1:], strict=True)]
    width = bins.edges[1] - bins.edges[0]
    shown = [i for i, n in enumerate(bins.counts) if n > 0]
    ax.bar(
        [centers[i] for i in shown],
        [bins.accuracy[i] for i in shown],
        width=width * 0.9,
        color="tab:blue",
        alpha=0.7,
        label="share right per bin",
    )
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    ax.plot(
        [bins.mean_confidence[i] for i in shown],
        [bins.accuracy[i] for i in shown],
        "o",
        color="tab:orange",
        label="(mean confidence, share right)",
    )
    for i in shown:
        ax.annotate(str(bins.counts[i]), (centers[i], 0.02), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="share right", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig

"""End-to-end metrics over conversations: automation, verified resolution, CSAT by path, latency.

Definitions (strict on purpose):
- automation rate: of the closed conversations, the share closed without a person (path ``bot``);
- verified resolution rate: of the closed conversations, the share the bot resolved alone *and* the
  customer confirmed (a survey saying it was resolved, or a thumbs-up with no thumbs-down). A
  customer who went quiet confirms nothing;
- CSAT by path: the mean satisfaction score of the conversations on each path (bot only, handed off);
- latency percentiles: of the reply latencies given, in milliseconds; ``latency_report`` gives the
  turn latency (a customer message to the bot's reply to it) at p50/p95/p99, overall and by path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Path = Literal["bot", "operator"]


@dataclass(frozen=True)
class ConversationOutcome:
    """How one conversation ended, as recorded by the product (resolutions, surveys, thumbs)."""

    conversation_id: str
    closed: bool
    path: Path  # "bot": no person took part; "operator": handed off
    outcome: str | None = None  # resolved | unresolved | follow_up (None: not recorded)
    confirmed: bool | None = None  # the customer confirmed the resolution (None: no signal)
    csat: float | None = None  # satisfaction score, when a survey was answered

    @property
    def is_verified_bot_resolution(self) -> bool:
        """Closed by the bot alone, resolved, and confirmed by the customer."""
        return self.closed and self.path == "bot" and self.outcome == "resolved" and self.confirmed is True


def automation_rate(conversations: Iterable[ConversationOutcome]) -> float:
    """Share of the closed conversations closed without a person (nan when none is closed)."""
    closed = [c for c in conversations if c.closed]
    return sum(c.path == "bot" for c in closed) / len(closed) if closed else float("nan")


def verified_resolution_rate(conversations: Iterable[ConversationOutcome]) -> float:
    """Share of the closed conversations that the bot resolved and the customer confirmed."""
    closed = [c for c in conversations if c.closed]
    return sum(c.is_verified_bot_resolution for c in closed) / len(closed) if closed else float("nan")


def csat_by_path(conversations: Iterable[ConversationOutcome]) -> dict[str, tuple[float, int]]:
    """Per path: (mean CSAT, number of rated conversations); paths without ratings are left out."""
    scores: dict[str, list[float]] = {}
    for c in conversations:
        if c.csat is not None:
            scores.setdefault(c.path, []).append(c.csat)
    return {path: (float(np.mean(v)), len(v)) for path, v in sorted(scores.items())}


def latency_percentiles(
    milliseconds: Sequence[float], percentiles: Sequence[float] = (50, 90, 95, 99)
) -> dict[str, float]:
    """``{"p50": ..., "p90": ...}`` by linear interpolation; nan for an empty sequence."""
    values = np.asarray(milliseconds, dtype=np.float64)
    out = {}
    for q in percentiles:
        if not 0 <= q <= 100:
            raise ValueError(f"percentiles must be in [0, 100], got {q!r}")
        out[f"p{q:g}"] = float(np.percentile(values, q)) if len(values) else float("nan")
    return out


@dataclass(frozen=True)
class TurnLatency:
    """How long the bot took to reply to one customer message, in a conversation on ``path``."""

    conversation_id: str
    path: Path
    milliseconds: float


TURN_PERCENTILES = (50, 95, 99)


def latency_report(turns: Sequence[TurnLatency]) -> dict[str, float]:
    """Turn latency p50/p95/p99 (ms) of all turns and of each path, with the number of turns of each."""
    groups: dict[str, list[float]] = {"": [t.milliseconds for t in turns]}
    for t in turns:
        groups.setdefault(f"{t.path}_", []).append(t.milliseconds)
    out: dict[str, float] = {}
    for prefix, values in sorted(groups.items()):
        out[f"turns_{prefix}n" if prefix else "turns"] = float(len(values))
        if values:
            for name, v in latency_percentiles(values, TURN_PERCENTILES).items():
                out[f"turn_latency_ms_{prefix}{name}"] = v
    return out


def e2e_report(
    conversations: Sequence[ConversationOutcome], latencies: Sequence[TurnLatency] | None = None
) -> dict[str, float]:
    """The end-to-end metrics as flat, MLflow-ready numbers (turn latencies when given)."""
    closed = [c for c in conversations if c.closed]
    out = {
        "conversations": float(len(conversations)),
        "closed": float(len(closed)),
        "automation_rate": automation_rate(conversations),
        "verified_resolution_rate": verified_resolution_rate(conversations),
    }
    for path, (mean, n) in csat_by_path(conversations).items():
        out[f"csat_{path}"] = mean
        out[f"csat_{path}_n"] = float(n)
    if latencies is not None:
        out.update(latency_report(latencies))
    return out

"""KPIs of the support desk by day and by path, and their charts.

For the conversations opened in ``[start, end)`` that have at least one customer message:
- path: "operator" when an operator resolved it or wrote in it, else "bot" (as ``surveys``);
- automation rate: share with no hand-off to people (no escalation record) on the bot path;
- escalation rate: share with at least one hand-off, overall and per reason (a conversation counts once
  per reason);
- CSAT: mean (1-6) and the share satisfied or better (>= 4) and delighted (6, 「感動した」); CES: mean
  (0-10, higher = easier); NPS: % promoters (9-10) minus % detractors (0-6), from the surveys of those
  conversations;
- top topics: the content words (``index.textja.terms``) in the most customer messages.
Days are calendar days in ``timezone`` (a support desk's day, not UTC's). Everything is computed in
Python from one pass over the period's rows: fine for months of a desk's traffic, not for years.
"""

from __future__ import annotations

import io
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from statistics import fmean
from zoneinfo import ZoneInfo

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.models import Conversation, Escalation, Message, Resolution, SurveyResponse
from index.textja import terms


@dataclass(frozen=True)
class ConversationFacts:
    """What the report needs to know about one conversation."""

    id: uuid.UUID
    day: date
    path: str
    reasons: frozenset[str]  # escalation reasons; empty when never handed over
    csat: int | None = None
    ces: int | None = None
    nps: int | None = None


@dataclass(frozen=True)
class Kpis:
    """The KPIs of a set of conversations."""

    conversations: int
    automation_rate: float | None
    escalation_rate: float | None
    escalation_by_reason: dict[str, float]
    surveys: int
    csat_mean: float | None
    csat_satisfied: float | None
    csat_delighted: float | None
    ces_mean: float | None
    nps: float | None


@dataclass(frozen=True)
class Report:
    """KPIs overall, by day and by path, and the top topics."""

    start: datetime
    end: datetime
    timezone: str
    totals: Kpis
    by_day: dict[str, Kpis]
    by_path: dict[str, Kpis]
    top_topics: list[tuple[str, int]] = field(default_factory=list)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(values: Sequence[int]) -> float | None:
    return fmean(values) if values else None


def kpis(facts: Sequence[ConversationFacts]) -> Kpis:
    """The KPIs of these conversations."""
    n = len(facts)
    escalated = [f for f in facts if f.reasons]
    automated = sum(1 for f in facts if not f.reasons and f.path == "bot")
    reasons = Counter(r for f in escalated for r in f.reasons)
    csat = [f.csat for f in facts if f.csat is not None]
    nps = [f.nps for f in facts if f.nps is not None]
    surveyed = sum(1 for f in facts if f.csat is not None or f.ces is not None or f.nps is not None)
    promoters, detractors = sum(1 for v in nps if v >= 9), sum(1 for v in nps if v <= 6)
    return Kpis(
        conversations=n,
        automation_rate=_share(automated, n),
        escalation_rate=_share(len(escalated), n),
        escalation_by_reason={r: c / n for r, c in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))},
        surveys=surveyed,
        csat_mean=_mean(csat),
        csat_satisfied=_share(sum(1 for v in csat if v >= 4), len(csat)),
        csat_delighted=_share(sum(1 for v in csat if v == 6), len(csat)),
        ces_mean=_mean([f.ces for f in facts if f.ces is not None]),
        nps=100.0 * (promoters - detractors) / len(nps) if nps else None,
    )


def conversation_facts(
    session: Session, start: datetime, end: datetime, tz: ZoneInfo
) -> list[ConversationFacts]:
    """One record per conversation opened in ``[start, end)`` with a customer message."""
    asked = select(Message.id).where(Message.conversation_id == Conversation.id, Message.role == "customer")
    period = (
        select(Conversation.id)
        .where(Conversation.created_at >= start, Conversation.created_at < end)
        .where(asked.exists())
    )
    rows = session.execute(
        select(Conversation.id, Conversation.created_at).where(Conversation.id.in_(period.scalar_subquery()))
    ).all()
    in_period = period.scalar_subquery()
    operator = set(
        session.scalars(
            select(Message.conversation_id).where(
                Message.conversation_id.in_(in_period), Message.role == "operator"
            )
        )
    )
    operator |= set(
        session.scalars(
            select(Resolution.conversation_id).where(
                Resolution.conversation_id.in_(in_period), Resolution.path == "operator"
            )
        )
    )
    reasons: dict[uuid.UUID, set[str]] = defaultdict(set)
    handoffs = select(Escalation.conversation_id, Escalation.reasons).where(
        Escalation.conversation_id.in_(in_period)
    )
    for cid, why in session.execute(handoffs):
        reasons[cid].update(why or ["unspecified"])
    surveys = {
        s.conversation_id: s
        for s in session.scalars(select(SurveyResponse).where(SurveyResponse.conversation_id.in_(in_period)))
    }
    out = []
    for cid, created in rows:
        survey = surveys.get(cid)
        out.append(
            ConversationFacts(
                cid,
                created.astimezone(tz).date(),
                "operator" if cid in operator else "bot",
                frozenset(reasons.get(cid, ())),
                survey.csat if survey else None,
                survey.ces if survey else None,
                survey.nps if survey else None,
            )  # fmt: skip
        )
    return out


def top_topics(session: Session, start: datetime, end: datetime, limit: int = 10) -> list[tuple[str, int]]:
    """The content words found in the most customer messages of the period."""
    texts = session.scalars(
        select(Message.text).where(
            Message.role == "customer", Message.created_at >= start, Message.created_at < end
        )
    )
    counts = Counter(word for text in texts for word in set(terms(text)))
    return counts.most_common(limit)


def build_report(session: Session, start: datetime, end: datetime, timezone: str = "Asia/Tokyo") -> Report:
    """The KPI report of ``[start, end)``."""
    if end <= start:
        raise ValueError(f"the report's end {end.isoformat()} must be after its start {start.isoformat()}")
    tz = ZoneInfo(timezone)
    facts = conversation_facts(session, start, end, tz)
    days: dict[date, list[ConversationFacts]] = defaultdict(list)
    paths: dict[str, list[ConversationFacts]] = {"bot": [], "operator": []}
    for f in facts:
        days[f.day].append(f)
        paths[f.path].append(f)
    return Report(
        start=start,
        end=end,
        timezone=timezone,
        totals=kpis(facts),
        by_day={d.isoformat(): kpis(days[d]) for d in sorted(days)},
        by_path={p: kpis(fs) for p, fs in paths.items()},
        top_topics=top_topics(session, start, end),
    )


def report_figure(report: Report) -> Figure:
    """Four panels: volume and automation by day, escalation reasons, CSAT and CES by day, NPS by path."""
    fig = Figure(figsize=(10.0, 7.0), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    days = list(report.by_day)
    (volume, reasons), (satisfaction, nps) = fig.subplots(2, 2)
    volume.bar(
        days, [k.conversations for k in report.by_day.values()], color="tab:blue", label="conversations"
    )
    volume.set(title="Conversations and automation rate by day", ylabel="conversations")
    rate = volume.twinx()
    rate.plot(days, [k.automation_rate or 0 for k in report.by_day.values()], "o-", color="tab:green")
    rate.set(ylim=(0, 1), ylabel="automation rate")
    by_reason = report.totals.escalation_by_reason
    reasons.barh(list(by_reason) or ["(none)"], list(by_reason.values()) or [0], color="tab:orange")
    reasons.set(title="Escalation rate by reason", xlabel="share of conversations", xlim=(0, 1))
    satisfaction.plot(days, [k.csat_mean for k in report.by_day.values()], "o-", label="CSAT mean (1-6)")
    satisfaction.plot(days, [k.ces_mean for k in report.by_day.values()], "s-", label="CES mean (0-10)")
    satisfaction.set(title="Satisfaction by day", ylim=(0, 10))
    satisfaction.legend(loc="lower left")
    paths = list(report.by_path)
    nps.bar(paths, [report.by_path[p].nps or 0 for p in paths], color=["tab:blue", "tab:purple"])
    nps.axhline(0, color="black", linewidth=0.8)
    nps.set(title="NPS by path", ylim=(-100, 100))
    for ax in (volume, satisfaction):
        ax.tick_params(axis="x", labelrotation=45)
    return fig


def report_png(report: Report) -> bytes:
    """The report's charts as a PNG."""
    buffer = io.BytesIO()
    report_figure(report).savefig(buffer, format="png")
    return buffer.getvalue()

"""Trend alerts: run the detector over stored customer messages, keep what it raised, post it to a webhook.

``check_trends`` reads the customer messages of the window and baseline ending at ``now``, detects
surging topics (``assistant.voc.trends``), drops those in cooldown (against alerts already stored) and
stores the rest. ``deliver_pending`` POSTs every undelivered alert of the last day as JSON to the
webhook, signed with HMAC-SHA256 (header ``X-Madoguchi-Signature: sha256=<hex>``) when a secret is
set; a failed delivery is recorded on the alert and retried at the next check. Run it from cron or a
scheduler: ``madoguchi voc trends check``.

Errors: none of its own; a webhook failure is recorded on the alert, never raised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.db import Database
from assistant.models import Message, TrendAlert
from assistant.settings import VocSettings
from assistant.voc.trends import (
    RecentAlert,
    Surge,
    TextEvent,
    TrendConfig,
    apply_cooldown,
    detect_surges,
    to_term_events,
)

log = logging.getLogger(__name__)
_RETRY_DELIVERY = timedelta(days=1)


def trend_config(voc: VocSettings) -> TrendConfig:
    """The detector's configuration from settings."""
    return TrendConfig(
        window=timedelta(minutes=voc.trend_window_minutes),
        baseline=timedelta(hours=voc.trend_baseline_hours),
        min_count=voc.trend_min_count,
        min_ratio=voc.trend_min_ratio,
        alpha=voc.trend_alpha,
        cooldown=timedelta(hours=voc.trend_cooldown_hours),
    )


@dataclass(frozen=True)
class AlertRecord:
    """A stored trend alert."""

    id: int
    label: str
    words: tuple[str, ...]
    window_start: datetime
    window_end: datetime
    count: int
    window_messages: int
    baseline_messages: int
    baseline_count: int
    expected: float
    ratio: float
    p_value: float
    examples: tuple[str, ...]
    created_at: datetime
    delivered_at: datetime | None
    delivery_error: str | None

    @classmethod
    def of(cls, row: TrendAlert) -> AlertRecord:
        """From its database row."""
        return cls(
            row.id, row.label, tuple(row.words), row.window_start, row.window_end, row.count,
            row.window_messages, row.baseline_messages, row.baseline_count, row.expected, row.ratio,
            row.p_value, tuple(row.examples), row.created_at, row.delivered_at, row.delivery_error,
        )  # fmt: skip

    def payload(self) -> dict[str, Any]:
        """The webhook body: what surged, how much, and example messages."""
        return {
            "type": "madoguchi.trend_alert",
            "id": self.id,
            "label": self.label,
            "words": list(self.words),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "count": self.count,
            "expected": round(self.expected, 3),
            "ratio": round(self.ratio, 2),
            "p_value": self.p_value,
            "examples": list(self.examples),
        }


def customer_events(session: Session, start: datetime, end: datetime) -> list[TextEvent]:
    """Customer messages with ``start < created_at <= end``."""
    rows = session.execute(
        select(Message.id, Message.created_at, Message.text)
        .where(Message.role == "customer", Message.created_at > start, Message.created_at <= end)
        .order_by(Message.created_at)
    ).all()
    return [TextEvent(at, text, message_id) for message_id, at, text in rows]


def _row(surge: Surge, now: datetime) -> TrendAlert:
    lead = surge.lead
    return TrendAlert(
        label=surge.label[:200],
        words=list(surge.words),
        window_start=surge.window_start,
        window_end=surge.window_end,
        count=surge.count,
        window_messages=surge.window_messages,
        baseline_messages=surge.baseline_messages,
        baseline_count=lead.baseline_count,
        expected=lead.expected,
        ratio=lead.ratio,
        p_value=lead.p_value,
        examples=list(surge.examples),
        created_at=now,
    )


def check_trends(database: Database, now: datetime, config: TrendConfig) -> list[AlertRecord]:
    """Detect surges in the window ending at ``now``, store those not in cooldown, return them."""
    with database.session() as session:
        events = customer_events(session, now - config.window - config.baseline, now)
        surges = detect_surges(to_term_events(events), now, config)
        if not surges:
            return []
        recent = session.scalars(
            select(TrendAlert).where(TrendAlert.created_at > now - config.cooldown)
        ).all()
        fresh = apply_cooldown(surges, [RecentAlert(frozenset(r.words), r.created_at) for r in recent],
                               now, config.cooldown)  # fmt: skip
        rows = [_row(s, now) for s in fresh]
        session.add_all(rows)
        session.flush()
        return [AlertRecord.of(r) for r in rows]


def sign(body: bytes, secret: str) -> str:
    """The signature header value for a webhook body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_alert(alert: AlertRecord, url: str, secret: str | None, timeout: float) -> str | None:
    """POST one alert; None on a 2xx answer, else what went wrong."""
    body = json.dumps(alert.payload(), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "madoguchi-voc"}
    if secret:
        headers["X-Madoguchi-Signature"] = sign(body, secret)
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def deliver_pending(
    database: Database, url: str, secret: str | None, timeout: float, now: datetime
) -> list[AlertRecord]:
    """Post every alert of the last day not delivered yet; record each outcome. Returns them."""
    with database.session() as session:
        pending = [
            AlertRecord.of(r)
            for r in session.scalars(
                select(TrendAlert)
                .where(TrendAlert.delivered_at.is_(None), TrendAlert.created_at > now - _RETRY_DELIVERY)
                .order_by(TrendAlert.id)
            )
        ]
    outcomes = {a.id: post_alert(a, url, secret, timeout) for a in pending}
    with database.session() as session:
        for alert_id, error in outcomes.items():
            row = session.get(TrendAlert, alert_id)
            if row is None:
                continue
            row.delivered_at = now if error is None else None
            row.delivery_error = error
            if error:
                log.warning("trend alert %d not delivered to %s: %s", alert_id, url, error)
        rows = [session.get(TrendAlert, a.id) for a in pending]
        return [AlertRecord.of(r) for r in rows if r is not None]


def run_trend_check(database: Database, voc: VocSettings, now: datetime) -> list[AlertRecord]:
    """One scheduled check: detect and store new alerts, then deliver what is pending (if configured)."""
    fresh = check_trends(database, now, trend_config(voc))
    if voc.webhook_url:
        secret = voc.webhook_secret.get_secret_value() if voc.webhook_secret else None
        delivered = {
            a.id: a for a in deliver_pending(database, voc.webhook_url, secret, voc.webhook_timeout, now)
        }
        fresh = [delivered.get(a.id, a) for a in fresh]
    return fresh


def list_alerts(session: Session, since: datetime | None, limit: int) -> Sequence[AlertRecord]:
    """Stored alerts, newest first."""
    query = select(TrendAlert).order_by(TrendAlert.created_at.desc(), TrendAlert.id.desc()).limit(limit)
    if since is not None:
        query = query.where(TrendAlert.created_at >= since)
    return [AlertRecord.of(r) for r in session.scalars(query)]

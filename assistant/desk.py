"""The desk's standing as SQL expressions: who is on shift, which conversations wait for people.

Shared by the operator queue (``assistant.operators``) and the customer turn's context
(``assistant.transcripts.turn_context``), which reads them in the same round trip as its other counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select

from assistant.models import Conversation, Operator


def waiting_filter() -> list[ColumnElement[bool]]:
    """Conversations handed to people that nobody has taken yet."""
    return [Conversation.status == "escalated", Conversation.assigned_operator_id.is_(None)]


def waiting_count() -> Any:
    """A scalar subquery: how many conversations wait for people."""
    return select(func.count()).select_from(Conversation).where(*waiting_filter()).scalar_subquery()


def on_shift_count(now: datetime, presence: timedelta) -> Any:
    """A scalar subquery: operators on shift and seen within ``presence`` of ``now``."""
    return on_shift_since(now - presence)


def on_shift_since(seen_since: datetime | ColumnElement[datetime]) -> Any:
    """A scalar subquery: operators on shift and seen since then (a time, or a bound parameter)."""
    return (
        select(func.count())
        .select_from(Operator)
        .where(Operator.on_shift.is_(True), Operator.last_seen_at >= seen_since)
        .scalar_subquery()
    )

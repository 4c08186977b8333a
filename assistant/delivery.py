"""Send with undo: an operator's message waits ``undo_seconds`` as a pending row, then is delivered once.

``schedule`` stores the pending ``operator_deliveries`` row; ``undo`` cancels it while the window is
open (one conditional UPDATE, so an undo and a delivery racing for the same row cannot both win);
``deliver_due`` delivers what is due, and ``DeliveryWorker`` runs it in the background of each app.

Delivering is per conversation, in one transaction: lock the conversation row, then for each due
pending delivery in order flip ``pending -> delivered`` with a conditional UPDATE and append the
operator message. Nothing lives only in memory, so a restart loses nothing; the conditional UPDATE
under the conversation lock means two workers (two replicas on one PostgreSQL) never deliver one
twice, and the lock keeps a conversation's operator messages in the order they were sent.

Errors (all ``DeliveryError``): ``DeliveryNotFoundError``, ``AlreadyDeliveredError`` and
``UndoWindowClosedError`` (the window passed; it is being delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from assistant.db import Database
from assistant.models import Conversation, Message, OperatorDelivery
from assistant.suggest import record_outcome
from assistant.transcripts import add_message

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A pending operator message cannot be changed as asked."""


class DeliveryNotFoundError(DeliveryError, LookupError):
    """No delivery with this id for this conversation and operator."""


class AlreadyDeliveredError(DeliveryError):
    """The message reached the customer already: it cannot be undone."""


class UndoWindowClosedError(DeliveryError):
    """The undo window is over; the message is on its way."""


@dataclass(frozen=True)
class Delivered:
    """An operator message that just reached the conversation."""

    delivery_id: int
    conversation_id: uuid.UUID
    operator_id: int
    message_id: int
    seq: int
    text: str
    created_at: datetime


def schedule(
    session: Session,
    *,
    conversation_id: uuid.UUID,
    operator_id: int,
    text: str,
    now: datetime,
    undo_seconds: float,
    suggestion_set_id: int | None = None,
    draft_index: int | None = None,
) -> OperatorDelivery:
    """Hold ``text`` for ``undo_seconds`` as a pending delivery."""
    if undo_seconds < 0:
        raise ValueError(f"undo_seconds must be >= 0, got {undo_seconds!r}")
    row = OperatorDelivery(
        conversation_id=conversation_id,
        operator_id=operator_id,
        text=text,
        status="pending",
        created_at=now,
        deliver_at=now + timedelta(seconds=undo_seconds),
        suggestion_set_id=suggestion_set_id,
        draft_index=draft_index,
    )
    session.add(row)
    session.flush()
    return row


def undo(
    session: Session, *, conversation_id: uuid.UUID, delivery_id: int, operator_id: int, now: datetime
) -> OperatorDelivery:
    """Cancel a pending delivery inside its window; undoing a cancelled one again is harmless."""
    row = session.get(OperatorDelivery, delivery_id)
    if row is None or row.conversation_id != conversation_id or row.operator_id != operator_id:
        raise DeliveryNotFoundError(
            f"no pending message {delivery_id} of yours in conversation {conversation_id}"
        )
    cancelled = session.execute(
        update(OperatorDelivery)
        .where(
            OperatorDelivery.id == delivery_id,
            OperatorDelivery.status == "pending",
            OperatorDelivery.deliver_at > now,
        )
        .values(status="cancelled")
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(row)
    if cancelled or row.status == "cancelled":
        return row
    if row.status == "delivered":
        raise AlreadyDeliveredError(f"message {delivery_id} was delivered already; it cannot be undone")
    raise UndoWindowClosedError(
        f"the undo window of message {delivery_id} closed at {row.deliver_at.isoformat()}; it is being sent"
    )


def pending_of(session: Session, conversation_id: uuid.UUID, operator_id: int) -> Sequence[OperatorDelivery]:
    """The operator's messages in this conversation still inside (or just past) their undo window."""
    return session.scalars(
        select(OperatorDelivery)
        .where(
            OperatorDelivery.conversation_id == conversation_id,
            OperatorDelivery.operator_id == operator_id,
            OperatorDelivery.status == "pending",
        )
        .order_by(OperatorDelivery.deliver_at, OperatorDelivery.id)
    ).all()


def next_due(database: Database) -> datetime | None:
    """When the earliest pending delivery is due, if any."""
    with database.session() as session:
        return session.scalar(
            select(func.min(OperatorDelivery.deliver_at)).where(OperatorDelivery.status == "pending")
        )


def deliver_due(database: Database, now: datetime, limit: int = 100) -> list[Delivered]:
    """Deliver every pending message due by ``now`` (up to ``limit`` conversations); what was delivered."""
    with database.session() as session:
        conversations = session.scalars(
            select(OperatorDelivery.conversation_id)
            .where(OperatorDelivery.status == "pending", OperatorDelivery.deliver_at <= now)
            .group_by(OperatorDelivery.conversation_id)
            .order_by(func.min(OperatorDelivery.deliver_at))
            .limit(limit)
        ).all()
    delivered: list[Delivered] = []
    for conversation_id in conversations:
        with database.session() as session:
            delivered.extend(deliver_conversation(session, conversation_id, now))
    return delivered


def deliver_conversation(session: Session, conversation_id: uuid.UUID, now: datetime) -> list[Delivered]:
    """Deliver the conversation's due messages in order, under its row lock (one transaction)."""
    # Blocks while another worker delivers to (or a customer writes in) this conversation; afterwards
    # the conditional UPDATE below finds nothing left to flip.
    status = session.scalar(
        select(Conversation.status).where(Conversation.id == conversation_id).with_for_update()
    )
    due = session.scalars(
        select(OperatorDelivery)
        .where(
            OperatorDelivery.conversation_id == conversation_id,
            OperatorDelivery.status == "pending",
            OperatorDelivery.deliver_at <= now,
        )
        .order_by(OperatorDelivery.deliver_at, OperatorDelivery.id)
    ).all()
    out = []
    for row in due:
        target = "cancelled" if status in (None, "closed") else "delivered"
        flipped = session.execute(
            update(OperatorDelivery)
            .where(OperatorDelivery.id == row.id, OperatorDelivery.status == "pending")
            .values(status=target, delivered_at=now if target == "delivered" else None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not flipped:
            continue  # undone (or delivered) since it was read
        if target == "cancelled":
            log.info("conversation %s closed before message %d was due; dropped", conversation_id, row.id)
            continue
        out.append(_append_message(session, row, now))
    return out


def _append_message(session: Session, row: OperatorDelivery, now: datetime) -> Delivered:
    message: Message = add_message(
        session, row.conversation_id, "operator", row.text, operator_id=row.operator_id
    )
    session.execute(
        update(OperatorDelivery)
        .where(OperatorDelivery.id == row.id)
        .values(message_id=message.id)
        .execution_options(synchronize_session=False)
    )
    record_outcome(
        session, row.conversation_id, row.suggestion_set_id, row.draft_index, row.text, row.created_at
    )
    return Delivered(
        delivery_id=row.id,
        conversation_id=row.conversation_id,
        operator_id=row.operator_id,
        message_id=message.id,
        seq=message.seq,
        text=message.text,
        created_at=message.created_at,
    )


class DeliveryWorker:
    """Delivers due messages in the background of one app (started and stopped by its lifespan).

    It sleeps until the next message is due, or ``poll_seconds`` at most (another replica may have
    scheduled one); ``wake()`` (thread-safe) makes it look at once. Customers' streams learn of a
    delivered message through ``assistant.events``: the hub hooked on the database's sessions announces
    every committed ``Message`` (with ``pg_notify`` to the other replicas on PostgreSQL).
    """

    def __init__(
        self,
        database: Database,
        clock: Callable[[], datetime],
        poll_seconds: float = 0.5,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds!r}")
        self.database = database
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.delivered = 0  # running counts, for health and tests
        self.rounds = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = self._loop.create_task(self._run(), name="madoguchi-delivery")

    async def stop(self) -> None:
        """Stop after the current round; pending rows stay in the database for the next start."""
        self._stopping = True
        self.wake()
        if self._task is not None:
            await self._task
            self._task = None

    def wake(self) -> None:
        """Look for due messages now (callable from any thread)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            delay = self.poll_seconds
            try:
                delay = await asyncio.to_thread(self.run_once)
            except Exception:  # a background loop's boundary: log it and try again next round
                log.exception("delivering operator messages failed; retrying in %.1f s", self.poll_seconds)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()

    def run_once(self) -> float:
        """Deliver what is due; how long to sleep before the next round."""
        self.rounds += 1
        upcoming = next_due(self.database)
        if upcoming is not None and upcoming <= self.clock():
            self.delivered += len(deliver_due(self.database, self.clock()))
            upcoming = next_due(self.database)
        if upcoming is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (upcoming - self.clock()).total_seconds()))

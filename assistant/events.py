"""Live events: wake-ups that tell open streams "conversation X changed, read the database again".

The database is the truth: a stream reads messages after the last sequence number it sent, and it
re-reads every few seconds even when nothing woke it, so a lost wake-up delays an event but never
loses one. Wake-ups travel two ways:

- inside one process, ``EventHub.wake`` sets the waiting streams' events (SQLite runs one process);
- across replicas on PostgreSQL, ``LISTEN/NOTIFY``: a session that wrote a message or changed a
  conversation sends ``pg_notify`` in the same transaction, so PostgreSQL delivers it only once the
  change is committed and visible, and never for a rollback. Every replica's ``PostgresListener``
  thread relays the notifications to its own hub.

Why NOTIFY rather than Redis pub/sub: it needs no second service to configure, secure and watch, and
being transactional it cannot announce a change before (or without) the commit; the payloads here are
tiny and few (one per committed write), far below what NOTIFY handles.

Writers need not know about any of this: ``EventHub.start`` hooks the database's sessions, so any
new row of a conversation (message, note, delivery...) or changed ``Conversation`` is announced;
code that writes with Core statements (a bulk ``UPDATE``, a customer turn's inserts) calls
``mark_changed``.

A change to the queue (a conversation enters or leaves it or moves in it: escalated, claimed,
released, closed while waiting; an operator going on or off shift) changes every waiting customer's
place or estimate, so the commit also announces each waiting conversation (up to
``QUEUE_WAKE_LIMIT``; any beyond learn at their periodic re-check). Sessions notice such changes made
through the ORM; bulk ``UPDATE``s of ownership call ``mark_queue_changed``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import psycopg
from sqlalchemy import event, inspect, select, text
from sqlalchemy.orm import Session

from assistant.db import Database
from assistant.models import Conversation, Operator

log = logging.getLogger(__name__)

CHANNEL = "madoguchi_events"
ALL = "*"  # the key of a subscription to every conversation (the operators' queue feed)
_CHANGED = "madoguchi_changed_conversations"
_QUEUE_CHANGED = "madoguchi_queue_changed"
QUEUE_WAKE_LIMIT = 500  # waiting conversations announced per queue change, first in line first
# Conversation columns that decide whether, and where, it waits in the queue.
_QUEUE_COLUMNS = ("status", "assigned_operator_id", "priority", "queued_at")


def mark_changed(session: Session, conversation_id: uuid.UUID | str) -> None:
    """Announce, when this session commits, that the conversation changed."""
    session.info.setdefault(_CHANGED, set()).add(str(conversation_id))


def mark_queue_changed(session: Session) -> None:
    """Announce, when this session commits, every waiting conversation: their places changed."""
    session.info[_QUEUE_CHANGED] = True


class Subscription:
    """One stream's wake-up flag, set from any thread, awaited on the stream's event loop."""

    def __init__(self, hub: EventHub, key: str) -> None:
        self.key = key
        self._hub = hub
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake the stream (thread-safe)."""
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the stream's loop is closed: it is gone
            self._hub.unsubscribe(self)

    def clear(self) -> None:
        """Forget earlier wake-ups: call before reading the database."""
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """True if woken within ``timeout`` seconds, False when it elapsed (time for a re-check)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self._hub.unsubscribe(self)


class EventHub:
    """In-process wake-ups, plus the session hooks and PostgreSQL listener that feed them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._database: Database | None = None
        self._listener: PostgresListener | None = None

    def subscribe(self, key: str) -> Subscription:
        """Wake-ups for one conversation id, or for every conversation (``ALL``)."""
        subscription = Subscription(self, key)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Drop a subscription (idempotent)."""
        with self._lock:
            self._subscriptions.discard(subscription)

    def wake(self, keys: Iterable[str]) -> None:
        """Wake the streams of these conversations, and every ``ALL`` stream."""
        wanted = set(keys)
        with self._lock:
            targets = [s for s in self._subscriptions if s.key == ALL or s.key in wanted]
        for subscription in targets:
            subscription.notify()

    def wake_all(self) -> None:
        """Wake every stream (after a listener reconnect: notifications may have been missed)."""
        with self._lock:
            targets = list(self._subscriptions)
        for subscription in targets:
            subscription.notify()

    @property
    def subscribers(self) -> int:
        """How many streams are waiting."""
        with self._lock:
            return len(self._subscriptions)

    def start(self, database: Database) -> None:
        """Hook the database's sessions; on PostgreSQL also listen for other replicas' changes."""
        self._database = database
        event.listen(database.sessions, "after_flush", _collect_flushed)
        event.listen(database.sessions, "before_commit", self._before_commit)
        event.listen(database.sessions, "after_commit", self._after_commit)
        event.listen(database.sessions, "after_rollback", _forget)
        if database.engine.dialect.name == "postgresql":
            self._listener = PostgresListener(database, self)
            self._listener.start()

    def stop(self) -> None:
        """Undo ``start``: remove the hooks and stop the listener."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        database, self._database = self._database, None
        if database is not None:
            event.remove(database.sessions, "after_flush", _collect_flushed)
            event.remove(database.sessions, "before_commit", self._before_commit)
            event.remove(database.sessions, "after_commit", self._after_commit)
            event.remove(database.sessions, "after_rollback", _forget)

    def _before_commit(self, session: Session) -> None:
        session.flush()  # so that the last writes are collected too
        if session.info.pop(_QUEUE_CHANGED, False):
            for conversation_id in _waiting_ids(session):
                mark_changed(session, conversation_id)
        changed = session.info.get(_CHANGED)
        if changed and session.get_bind().dialect.name == "postgresql":
            session.execute(
                text("SELECT pg_notify(:channel, key) FROM unnest(CAST(:keys AS text[])) AS key"),
                {"channel": CHANNEL, "keys": sorted(changed)},
            )

    def _after_commit(self, session: Session) -> None:
        changed = session.info.pop(_CHANGED, None)
        if changed:
            self.wake(changed)


def _collect_flushed(session: Session, _context: Any) -> None:
    for obj in session.new:  # a message, note, delivery, resolution...: anything of a conversation
        conversation_id = getattr(obj, "conversation_id", None)
        if conversation_id is not None:
            mark_changed(session, conversation_id)
    for obj in session.dirty:
        if isinstance(obj, Conversation) and session.is_modified(obj, include_collections=False):
            mark_changed(session, obj.id)
            if _has_changes(obj, *_QUEUE_COLUMNS):
                mark_queue_changed(session)
        elif isinstance(obj, Operator) and _has_changes(obj, "on_shift"):  # the wait estimates change
            mark_queue_changed(session)


def _has_changes(obj: object, *columns: str) -> bool:
    attrs = inspect(obj).attrs
    return any(attrs[column].history.has_changes() for column in columns)


def _waiting_ids(session: Session) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(Conversation.id)
            .where(Conversation.status == "escalated", Conversation.assigned_operator_id.is_(None))
            .order_by(Conversation.priority.desc(), Conversation.queued_at)
            .limit(QUEUE_WAKE_LIMIT)
        )
    )


def _forget(session: Session) -> None:
    session.info.pop(_CHANGED, None)
    session.info.pop(_QUEUE_CHANGED, None)


@dataclass(frozen=True)
class StreamTiming:
    """How a stream waits: re-check period, lifetime before the client reconnects, keep-alives."""

    recheck: float = 5.0
    lifetime: float = 300.0
    keepalive: float = 15.0


async def watch(
    hub: EventHub, key: str, poll: Callable[[], tuple[list[bytes], bool]], timing: StreamTiming
) -> AsyncIterator[bytes]:
    """Server-sent event chunks: ``poll()`` (run in a worker thread) after every wake-up or re-check.

    ``poll`` reads the database from its own cursor and returns the chunks to send and whether the
    stream is finished. The subscription is taken, and cleared, before each read, so a wake-up that
    comes during a read causes one more read rather than being lost.
    """
    subscription = hub.subscribe(key)
    clock = asyncio.get_running_loop().time
    started = last_sent = clock()
    try:
        while True:
            subscription.clear()
            chunks, finished = await anyio.to_thread.run_sync(poll)
            for chunk in chunks:
                yield chunk
            if chunks:
                last_sent = clock()
            remaining = timing.lifetime - (clock() - started)
            if finished or remaining <= 0:
                return
            woken = await subscription.wait(min(timing.recheck, remaining))
            if not woken and clock() - last_sent >= timing.keepalive:
                yield b": keep-alive\n\n"
                last_sent = clock()
    finally:
        subscription.close()


class PostgresListener:
    """A thread holding one ``LISTEN`` connection, relaying notifications to the hub; reconnects."""

    def __init__(self, database: Database, hub: EventHub) -> None:
        url = database.engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._hub = hub
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="madoguchi-listen", daemon=True)
        self.listening = threading.Event()

    def start(self) -> None:
        """Start listening in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop within about a second."""
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._listen()
                backoff = 0.5
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("event listener lost PostgreSQL (%s); retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _listen(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            self._hub.wake_all()  # whatever changed while we were not listening
            while not self._stopping.is_set():
                for notification in connection.notifies(timeout=1.0):
                    self._hub.wake([notification.payload])

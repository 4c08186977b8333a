"""``Idempotency-Key``: a retried POST replays the stored response instead of acting twice.

The record is written in the same transaction as the request's first effect (the stored customer
message, the new conversation), so either both exist or neither does. A retry with the same key and
the same request gets the stored response; with a different request, 422; while the first is still
running, 409. If the process answering died, a retry after the lease takes the request over and
answers the message that was already stored: nothing is lost, nothing is stored twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from assistant.api.errors import IdempotencyInProgressError, IdempotencyMismatchError
from assistant.models import IdempotencyRecord


def request_fingerprint(method: str, path: str, payload: Any) -> str:
    """A hash of what the request asks for: method, path and the validated body, canonically."""
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class Replay:
    """The request was done before: send this again."""

    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Fresh:
    """First time: go ahead, then ``complete`` the record."""

    record_id: int


@dataclass(frozen=True)
class Resume:
    """An earlier attempt stored its message and died; finish answering that message."""

    record_id: int
    message_id: int | None


Claim = Replay | Fresh | Resume


def replay_response(replay: Replay) -> JSONResponse:
    """The stored response, marked as a replay (``Idempotent-Replayed: true``)."""
    return JSONResponse(replay.body, status_code=replay.status_code, headers={"Idempotent-Replayed": "true"})


def claim(
    session: Session, api_key_id: int, key: str, fingerprint: str, *, now: datetime, lease: timedelta
) -> Claim:
    """Take the idempotency key for this request, or learn what became of the earlier one."""
    try:
        with session.begin_nested():
            record = IdempotencyRecord(
                api_key_id=api_key_id, key=key, request_hash=fingerprint, locked_at=now, created_at=now
            )
            session.add(record)
        return Fresh(record.id)
    except IntegrityError:
        pass
    existing = session.scalars(
        select(IdempotencyRecord).where(
            IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
        )
    ).one()
    if existing.request_hash != fingerprint:
        raise IdempotencyMismatchError(f"Idempotency-Key {key!r} was already used for a different request")
    if existing.status_code is not None and existing.response is not None:
        return Replay(existing.status_code, existing.response)
    remaining = existing.locked_at + lease - now
    if remaining > timedelta(0):
        raise _in_progress(key, remaining)
    # Take over only if nobody else did since we read it (compare-and-set on the lock time).
    taken = session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == existing.id, IdempotencyRecord.locked_at == existing.locked_at)
        .values(locked_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise _in_progress(key, lease)
    return Resume(existing.id, existing.message_id)


def _in_progress(key: str, remaining: timedelta) -> IdempotencyInProgressError:
    seconds = max(1, int(remaining.total_seconds()) + 1)
    return IdempotencyInProgressError(
        f"a request with Idempotency-Key {key!r} is still being processed",
        headers={"Retry-After": str(seconds)},
    )


def attach_message(session: Session, record_id: int, message_id: int) -> None:
    """Remember the customer message the request stored, for a take-over after a crash."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id)
        .values(message_id=message_id)
        .execution_options(synchronize_session=False)
    )


def complete(session: Session, record_id: int, status_code: int, body: dict[str, Any]) -> None:
    """Store the response a retry will replay."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id)
        .values(status_code=status_code, response=body)
        .execution_options(synchronize_session=False)
    )

"""A lock that keeps a scheduled job to one run at a time, across processes and replicas.

On PostgreSQL a session-level advisory lock (``pg_try_advisory_lock``) on a connection held for the
run: every replica sharing the database sees it, and the server drops it when a crashed run's
connection goes. On SQLite (one host by nature) an ``flock`` on a file beside the database, which the
kernel drops when the process dies. Nobody waits: a run that does not get the lock skips.
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from assistant.db import Database


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"madoguchi:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def job_lock(database: Database, name: str) -> Iterator[bool]:
    """Hold the lock named ``name`` for the block if nobody else does; yields whether it was taken."""
    if database.engine.dialect.name == "postgresql":
        with _advisory_lock(database, name) as taken:
            yield taken
        return
    db_file = database.engine.url.database
    on_disk = bool(db_file) and db_file != ":memory:"
    path = Path(str(db_file)).expanduser() if on_disk else Path(tempfile.gettempdir()) / "madoguchi-memory"
    with open(path.with_name(f"{path.name}.{name}.lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(database: Database, name: str) -> Iterator[bool]:
    key = _advisory_key(name)
    with database.engine.connect() as connection:
        taken = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        connection.commit()
        try:
            yield taken
        finally:
            if taken:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()

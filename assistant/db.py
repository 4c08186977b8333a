"""The database: an engine and session factory built from a URL, and schema migrations.

A SQLite file by default (WAL journal, foreign keys on, a busy timeout so concurrent writers wait),
PostgreSQL through psycopg 3 when the URL says ``postgresql://``. Alembic owns the schema:
``upgrade(url)`` runs the packaged migrations from code, with no ``alembic.ini`` needed.

Errors: ``DatabaseURLError`` for a URL we cannot use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from assistant.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class DatabaseURLError(ValueError):
    """A database URL names a backend Madoguchi does not support."""


def normalize_url(url: str | URL) -> URL:
    """Pin the driver: ``postgresql://`` means psycopg 3 here (SQLAlchemy's default is psycopg2)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise DatabaseURLError(f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}")


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def _begin_immediate(connection: Any) -> None:
    # Take the write lock up front: a deferred transaction that reads and then writes fails at once
    # with SQLITE_BUSY when another writer got in between, whereas this one waits (busy_timeout).
    # It also makes SAVEPOINTs work, which the sqlite3 module's own transaction handling breaks.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# anyio's default worker-thread limit (FastAPI runs sync endpoints there), and room for the rest.
SQLITE_POOL_SIZE = 40
SQLITE_POOL_OVERFLOW = 20


def make_engine(url: str | URL) -> Engine:
    """An engine for the URL; a SQLite file's folder is created if missing."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        if on_disk:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Sessions run in FastAPI's worker threads; each thread checks out its own connection. The
        # pool keeps one per worker thread (anyio's default limit): with SQLAlchemy's default (5 + 10
        # overflow) a crowd of turns waited for connections, and every overflow connection was closed
        # on return and opened again, pragmas and all.
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 10},
            **({"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_POOL_OVERFLOW} if on_disk else {}),
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


@dataclass(frozen=True)
class Database:
    """An engine and its session factory."""

    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def connect(cls, url: str | URL) -> Database:
        """Open (lazily) the database at ``url``."""
        engine = make_engine(url)
        return cls(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back otherwise."""
        with self.sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def alembic_config(url: str | URL) -> Any:
    """An Alembic ``Config`` for the packaged migrations, built without any ini file."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats % as interpolation; a password may contain it.
    rendered = normalize_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(database: Settings | str | URL, revision: str = "head") -> None:
    """Migrate the database (settings or a URL) to ``revision``, the newest by default."""
    from alembic import command

    parsed = normalize_url(database.database_url if isinstance(database, Settings) else database)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(parsed), revision)


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()

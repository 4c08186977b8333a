"""Databases for the assistant's tests: a real SQLite file and the real PostgreSQL, same contract.

``database_url`` is parametrized over both backends. PostgreSQL gets one throw-away database per test
run (``mdg_test_<random>``), migrated once and emptied before each test, dropped at the end; when the
server is unreachable those tests skip, saying why. SQLite gets a fresh file per test, copied from a
file migrated once per run.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from assistant.db import Database, upgrade
from assistant.models import Base
from assistant.settings import Settings
from tests.assistant.seams import Api, start_api
from tests.conftest import SMALL_KB

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run; dropped afterwards."""
    try:
        admin = _pg_admin()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    name = f"mdg_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test copies it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _empty_postgres(url: str) -> None:
    database = Database.connect(url)
    try:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with database.session() as session:
            session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        database.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "madoguchi.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_server_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An open ``Database`` on each backend."""
    db = Database.connect(database_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    """The small test knowledge base, indexed once per run with the real default embedder."""
    from index.build import build_index

    directory = tmp_path_factory.mktemp("index")
    build_index(directory, [SMALL_KB], embedder, root=SMALL_KB)
    return directory


@pytest.fixture(scope="session")
def knowledge_index(index_dir: Path, embedder: Any) -> Any:
    """The small test knowledge base's index, loaded."""
    from index.store import load_index

    return load_index(index_dir, embedder)


@pytest.fixture(scope="session")
def responder(knowledge_index: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The production responder, as ``madoguchi serve`` builds it from default settings."""
    from assistant.respond import Responder

    return Responder.from_settings(Settings(home=tmp_path_factory.mktemp("home")), knowledge_index)


@pytest.fixture
def api(database_url: str, tmp_path: Path, responder: Any) -> Iterator[Api]:
    """The app under test on each database backend, with the real responder."""
    with start_api(database_url, tmp_path, responder) as running:
        yield running

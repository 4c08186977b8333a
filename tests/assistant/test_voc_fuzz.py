"""Schemathesis against the staff endpoints of the voice of the customer, with an admin key: generated
requests never get a 500 or an undocumented reply (the survey is fuzzed with a customer key in
test_openapi_fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from assistant.api.app import create_app
from assistant.api.deps import Services
from assistant.db import Database, upgrade
from assistant.keys import issue_key
from assistant.settings import ROLES, ApiSettings, RateLimit, Settings
from tests.assistant.seams import free_port, uvicorn_in_thread

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402

_LIMIT = RateLimit(per_minute=1_000_000, burst=1_000_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, responder: Any) -> Iterator[tuple[str, str]]:
    """The app under uvicorn on a free port; yields its base URL and an admin key."""
    home = tmp_path_factory.mktemp("vocfuzz")
    limits = dict.fromkeys(ROLES, _LIMIT)
    app_settings = Settings(home=home, port=free_port(), api=ApiSettings(rate_limits=limits))
    upgrade(app_settings)
    database = Database.connect(app_settings.database_url)
    with database.session() as session:
        key = issue_key(session, "admin", "fuzz").secret
    app = create_app(app_settings, Services(settings=app_settings, database=database, responder=responder))
    try:
        with uvicorn_in_thread(app, app_settings.port) as base_url:
            yield base_url, key
    finally:
        database.dispose()


SPEC = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(SPEC).include(path_regex=r"^/v1/voc/")


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_staff_endpoints_answer_generated_requests_as_documented(case: Any, server: tuple[str, str]) -> None:
    base_url, key = server
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {key}"})

"""Schemathesis against our own OpenAPI spec: generated requests never get a 500 or an undocumented reply.

Runs the production app under uvicorn on a free loopback port, on a SQLite file, with the real
responder, a customer key and rate limits high enough for the generated traffic.
"""

from __future__ import annotations

import uuid
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
    """The app under uvicorn on a free port; yields its base URL and a customer key."""
    home = tmp_path_factory.mktemp("fuzz")
    limits = dict.fromkeys(ROLES, _LIMIT)
    app_settings = Settings(home=home, port=free_port(), api=ApiSettings(rate_limits=limits))
    upgrade(app_settings)
    database = Database.connect(app_settings.database_url)
    with database.session() as session:
        key = issue_key(session, "customer", "fuzz").secret
    app = create_app(app_settings, Services(settings=app_settings, database=database, responder=responder))
    try:
        with uvicorn_in_thread(app, app_settings.port) as base_url:
            yield base_url, key
    finally:
        database.dispose()


# The spec needs no running services: routes alone define it.
SPEC = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case: Any, server: tuple[str, str]) -> None:
    base_url, key = server
    if case.headers and "Idempotency-Key" in case.headers:
        # Generated keys repeat across different bodies, which is (rightly) a 422; reuse is tested
        # in test_api. Here every request gets its own key, so valid requests stay valid.
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {key}"})


def test_the_spec_documents_every_error_shape() -> None:
    post_message = SPEC["paths"]["/v1/conversations/{conversation_id}/messages"]["post"]
    assert {"401", "403", "404", "409", "413", "422", "429"} <= set(post_message["responses"])
    assert "Idempotency-Key" in {p["name"] for p in post_message["parameters"]}

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
from assistant.settings import Settings
from tests.assistant.seams import served_with_key

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, responder: Any) -> Iterator[tuple[str, str]]:
    """The app under uvicorn on a free port; yields its base URL and a customer key."""
    with served_with_key(tmp_path_factory.mktemp("fuzz"), responder, "customer") as running:
        yield running


# The spec needs no running services: routes alone define it.
SPEC = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(SPEC)
# A generated body over api.max_body_bytes is refused with 413 before its content is looked at: a
# correct rejection of invalid data, which schemathesis's default list leaves out (it failed on a
# 190 KB body sent to /resolve).
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]


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

"""Schemathesis against the staff endpoints of the voice of the customer, with an admin key: generated
requests never get a 500 or an undocumented reply (the survey is fuzzed with a customer key in
test_openapi_fuzz.py)."""

from __future__ import annotations

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
    """The app under uvicorn on a free port; yields its base URL and an admin key."""
    with served_with_key(tmp_path_factory.mktemp("vocfuzz"), responder, "admin") as running:
        yield running


SPEC = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(SPEC).include(path_regex=r"^/v1/voc/")


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_staff_endpoints_answer_generated_requests_as_documented(case: Any, server: tuple[str, str]) -> None:
    base_url, key = server
    case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {key}"})

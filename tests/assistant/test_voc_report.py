"""The KPI report: pure KPIs, the API (JSON and PNG) and the CLI on each backend (page: test_voc_browser)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from assistant.cli import app as cli_app
from assistant.transcripts import (
    add_message,
)
from assistant.voc.report import ConversationFacts, kpis
from tests.assistant.seams import Api

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_kpis_follow_their_definitions() -> None:
    day = date(2026, 11, 20)
    facts = [
        ConversationFacts(uuid.uuid4(), day, "bot", frozenset(), csat=6, ces=9, nps=10),
        ConversationFacts(uuid.uuid4(), day, "bot", frozenset(), csat=4, nps=9),
        ConversationFacts(uuid.uuid4(), day, "bot", frozenset({"low_confidence"}), nps=7),
        ConversationFacts(
            uuid.uuid4(), day, "operator", frozenset({"low_confidence", "vip"}), csat=2, ces=3, nps=2
        ),
    ]
    k = kpis(facts)
    assert k.conversations == 4 and k.automation_rate == 0.5 and k.escalation_rate == 0.5
    assert k.escalation_by_reason == {"low_confidence": 0.5, "vip": 0.25}
    assert k.csat_mean == 4.0 and k.csat_satisfied == 2 / 3 and k.csat_delighted == 1 / 3
    assert k.ces_mean == 6.0 and k.surveys == 4
    assert k.nps == 100.0 * (2 - 1) / 4  # promoters 10, 9; detractor 2; 7 is passive
    empty = kpis([])
    assert empty.conversations == 0 and empty.automation_rate is None and empty.nps is None


def _chat(api: Api, text: str, survey: dict[str, Any] | None, operator: bool = False) -> str:
    cid = api.open()
    assert api.say(cid, text).status_code == 200
    if operator:
        with api.services.database.session() as session:
            add_message(session, uuid.UUID(cid), "operator", "担当の佐藤です。")
    api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers())
    if survey:
        posted = api.client.post(f"/v1/conversations/{cid}/survey", json=survey, headers=api.headers())
        assert posted.status_code == 201, posted.text
    return cid


def test_the_report_through_the_api_and_the_cli(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    _chat(api, "SIMが届いたけど使えない", {"csat": 6, "ces": 9, "nps": 10})
    _chat(api, "担当者と話したいです", {"csat": 2, "ces": 3, "nps": 3, "resolved": False}, operator=True)
    _chat(api, "解約したい", None)
    api.clock.now = datetime.now(UTC)
    response = api.client.get("/v1/voc/report", headers=api.headers("operator"))
    assert response.status_code == 200, response.text
    report = response.json()
    totals = report["totals"]
    assert totals["conversations"] == 3 and totals["surveys"] == 2
    assert totals["escalation_rate"] == pytest.approx(1 / 3)
    assert "human_requested" in totals["escalation_by_reason"]
    assert totals["csat_mean"] == 4.0 and totals["nps"] == 0.0 and totals["csat_delighted"] == 0.5
    assert (
        report["by_path"]["operator"]["conversations"] == 1 and report["by_path"]["bot"]["conversations"] == 2
    )
    assert sum(k["conversations"] for k in report["by_day"].values()) == 3
    assert report["timezone"] == "Asia/Tokyo"
    assert {"word": "解約", "messages": 1} in report["top_topics"]

    png = api.client.get("/v1/voc/report.png", headers=api.headers("admin"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)
    for path in (
        "/v1/voc/report?days=0",
        "/v1/voc/report?days=367",
        "/v1/voc/report?end=yesterday",
        "/v1/voc/report?end=0",
    ):
        refused = api.client.get(path, headers=api.headers("admin"))
        assert refused.status_code == 422 and refused.json()["code"] == "validation_error", path
    long_ago = api.client.get("/v1/voc/report?end=2020-01-31&days=31", headers=api.headers("admin")).json()
    assert long_ago["totals"]["conversations"] == 0 and long_ago["start"].startswith("2020-01-01")
    assert api.client.get("/v1/voc/report", headers=api.headers("customer")).status_code == 403

    monkeypatch.setenv("MADOGUCHI_DATABASE_URL", database_url)
    out = tmp_path / "report.png"
    result = CliRunner().invoke(cli_app, ["voc", "report", "--png", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["conversations"] == 3
    assert out.read_bytes().startswith(PNG_MAGIC)
    wrong = CliRunner().invoke(cli_app, ["voc", "report", "--start", "2026-13-01"])
    assert wrong.exit_code == 2 and "YYYY-MM-DD" in wrong.output

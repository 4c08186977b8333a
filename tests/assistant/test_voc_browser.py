"""The survey step of the chat widget and the VoC report page in headless Chromium (real uvicorn server)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from sqlalchemy import select

from assistant.db import Database
from assistant.keys import issue_key
from assistant.models import SurveyResponse
from assistant.transcripts import (
    BotReply,
    NewConversation,
    add_bot_reply,
    add_message,
    close_conversation,
    open_conversation,
)
from assistant.voc.surveys import SurveyAnswers, record_survey
from tests.assistant.test_voc_report import PNG_MAGIC
from tests.assistant.test_widget_browser import CHROMIUM, _ask, _open, browser, server

__all__ = ["browser", "server"]  # fixtures, shared with the widget's own browser tests

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"Debian chromium not found at {CHROMIUM}"),
]


def test_end_the_chat_and_answer_the_survey(server: tuple[str, Database], browser: Any) -> None:
    base, database = server
    errors: list[str] = []
    page = _open(browser, f"{base}/?lang=ja", errors)
    assert page.locator('[data-testid="survey"]').is_hidden()
    _ask(page, "開通のやり方を教えて")
    page.click('[data-testid="end-chat"]')
    page.wait_for_selector('[data-testid="survey"]:not([hidden])')
    assert page.locator('[data-testid="status-banner"]').get_attribute("data-status") == "closed"
    labels = page.locator('[data-testid="survey-csat"] label').all_inner_texts()
    assert labels[-1] == "感動した" and len(labels) == 6
    page.check('[data-testid="survey-csat-6"]')
    page.check('[data-testid="survey-ces-9"]')
    page.check('[data-testid="survey-nps-10"]')
    page.check('[data-testid="survey-resolved-yes"]')
    page.check('[data-testid="survey-reasons-faq_hard_to_understand"]')
    page.fill('[data-testid="survey-comment"]', "すぐに開通できました")
    page.click('[data-testid="survey-submit"]')
    page.wait_for_selector('[data-testid="survey-thanks"]:not([hidden])')
    assert page.locator('[data-testid="survey"]').is_hidden()
    with database.session() as session:
        row = session.scalars(select(SurveyResponse)).one()
    assert (row.csat, row.ces, row.nps, row.resolved, row.path) == (6, 9, 10, True, "bot")
    assert row.reasons == ["faq_hard_to_understand"] and row.comment == "すぐに開通できました"
    assert row.cited_source_ids and row.cited_source_ids[0] == "sim-activation"

    page.click('[data-testid="new-chat"]')  # a new conversation hides the survey again
    page.wait_for_selector('[data-testid="survey-thanks"]', state="hidden")
    assert page.locator('[data-testid="survey"]').is_hidden()
    assert errors == []


def test_the_report_page_shows_kpis_and_exports_the_chart(
    server: tuple[str, Database], browser: Any, tmp_path: Any
) -> None:
    base, database = server
    with database.session() as session:
        admin = issue_key(session, "admin", "voc-page").secret
        site = issue_key(session, "customer", "site").info
        for i, (text, decision, csat) in enumerate(
            [("解約したい", "answer", 6), ("圏外です", "escalate", 2)]
        ):
            conversation = open_conversation(session, site, NewConversation())
            asked = add_message(session, conversation.id, "customer", text)
            add_bot_reply(
                session, conversation, asked, BotReply("…", decision, 0.9 - i, ("low_confidence",) * i)
            )
            close_conversation(session, conversation)
            record_survey(session, conversation, SurveyAnswers(csat=csat, nps=10 - 8 * i))
    errors: list[str] = []
    page = browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/voc")
    page.wait_for_selector("body[data-ready=true]")
    page.fill('[data-testid="key"]', "not-a-key")
    page.click('[data-testid="load"]')
    page.wait_for_selector("body[data-loaded=error]")
    assert "unknown or revoked" in page.locator('[data-testid="error"]').inner_text()
    page.fill('[data-testid="key"]', admin)
    page.click('[data-testid="load"]')
    page.wait_for_selector("body[data-loaded=true]")
    assert page.locator('[data-testid="kpi"]').count() == 9
    assert page.locator('[data-testid="by-path-row"]').count() == 2
    assert page.locator('[data-testid="kpi"]').first.inner_text().endswith("2")  # two conversations
    assert "low_confidence: 50.0%" in page.locator('[data-testid="reasons"]').inner_text()
    chart = page.locator('[data-testid="chart"]')
    assert chart.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0  # the PNG decoded
    assert page.locator('[data-testid="export"]').get_attribute("href").startswith("blob:")
    with page.expect_download() as download:
        page.click('[data-testid="export"]')
    saved = tmp_path / "export.png"
    download.value.save_as(saved)
    assert saved.read_bytes().startswith(PNG_MAGIC)
    page.screenshot(path=str(tmp_path / "voc.png"), full_page=True)
    assert errors == []

"""The survey step of the chat widget in headless Chromium against a real uvicorn server."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from sqlalchemy import select

from assistant.db import Database
from assistant.models import SurveyResponse
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
    page.wait_for_function("document.querySelector('[data-testid=survey-thanks]').hidden")
    assert page.locator('[data-testid="survey"]').is_hidden()
    assert errors == []

"""The operator console in headless Chromium against a real uvicorn server and a live customer stream.

An operator signs in, claims an escalated chat, edits a suggested reply, sends it and undoes it within
the window, sends it again, and resolves; the customer's server-sent event stream, open the whole
time, receives exactly the one message that was sent. Debian's ``chromium`` driven by Playwright
(``executable_path``; never ``playwright install``); the production app with the real responder.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from assistant.api.app import create_app
from assistant.api.deps import Services
from assistant.db import Database, upgrade
from assistant.keys import issue_key
from assistant.models import Resolution, SuggestionSet
from assistant.settings import Settings
from tests.assistant.seams import free_port, parse_events, uvicorn_in_thread
from tests.assistant.test_widget_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"Debian chromium not found at {CHROMIUM}"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
UNDO_SECONDS = 2.0


@pytest.fixture
def server(tmp_path: Path, responder: Any) -> Iterator[tuple[str, Database, dict[str, str]]]:
    """The app under uvicorn in a thread, with a short undo window; yields its URL, database and keys."""
    operators = {"undo_seconds": UNDO_SECONDS, "delivery_poll_seconds": 0.2}
    settings = Settings(home=tmp_path, port=free_port(), operators=operators)
    upgrade(settings)
    database = Database.connect(settings.database_url)
    with database.session() as session:
        keys = {
            "customer": issue_key(session, "customer", "shop").secret,
            "operator": issue_key(session, "operator", "Sato").secret,
        }
    app = create_app(settings, Services(settings=settings, database=database, responder=responder))
    try:
        with uvicorn_in_thread(app, settings.port) as base_url:
            yield base_url, database, keys
    finally:
        database.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class CustomerStream:
    """The customer's live event stream, read in a thread until the conversation closes."""

    def __init__(self, base: str, cid: str, key: str) -> None:
        self.url = f"{base}/v1/conversations/{cid}/events?seconds=60"
        self.headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        self.body = ""
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.connected.wait(10), "the customer's stream did not open"

    def _read(self) -> None:
        with httpx.stream("GET", self.url, headers=self.headers, timeout=70) as response:
            self.connected.set()
            for text in response.iter_text():
                self.body += text

    def operator_messages(self) -> list[str]:
        self.thread.join(timeout=30)
        events = parse_events(self.body)
        return [data["text"] for name, data in events if name == "message" and data["role"] == "operator"]


def _escalated_conversation(base: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    cid = httpx.post(f"{base}/v1/conversations", json={"member_id": "M-1001"}, headers=headers).json()["id"]
    for text in ("担当者と話したい", "SIMが届いたけど使えない"):
        response = httpx.post(f"{base}/v1/conversations/{cid}/messages", json={"text": text}, headers=headers)
        assert response.status_code == 200, response.text
    assert response.json()["status"] == "escalated"
    return str(cid)


def test_claim_edit_a_suggestion_undo_send_and_resolve(
    server: tuple[str, Database, dict[str, str]], browser: Any, tmp_path: Path
) -> None:
    base, database, keys = server
    cid = _escalated_conversation(base, keys["customer"])
    stream = CustomerStream(base, cid, keys["customer"])
    errors: list[str] = []
    page = browser.new_page(locale="en-US")
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{base}/console")
    page.wait_for_selector("body[data-ready=login]")
    page.fill('[data-testid="key"]', keys["operator"])
    page.click('[data-testid="connect"]')
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator('[data-testid="me-name"]').inner_text() == "Sato"

    page.locator(f'[data-testid="queue-item"][data-id="{cid}"] [data-testid="claim"]').click()
    page.wait_for_selector('[data-testid="draft"]')
    assert "M-1001" in page.locator('[data-testid="customer"]').inner_text()
    assert page.locator('[data-testid="msg-customer"]').count() == 2
    page.wait_for_selector(f'[data-testid="mine-item"][data-id="{cid}"]')
    first_draft = page.locator('[data-testid="draft"]').first
    assert first_draft.get_attribute("data-source") == "sim-activation"
    draft_text = first_draft.locator('[data-testid="draft-text"]').inner_text()

    first_draft.locator('[data-testid="edit"]').click()
    assert page.input_value('[data-testid="text"]') == draft_text
    page.fill('[data-testid="text"]', "お待たせしました。" + draft_text)
    page.click('[data-testid="send"]')
    pending = page.locator('[data-testid="pending-item"]')
    pending.locator('[data-testid="countdown"]').filter(has_text="sending in").wait_for()
    pending.locator('[data-testid="undo"]').click()
    page.wait_for_selector('[data-testid="pending-item"]', state="detached")
    assert page.input_value('[data-testid="text"]') == "お待たせしました。" + draft_text  # back to edit

    sent = draft_text + "\nほかにご不明な点があればお知らせください。"
    page.fill('[data-testid="text"]', sent)
    page.click('[data-testid="send"]')
    page.locator('[data-testid="countdown"]').filter(has_text="sent").wait_for(timeout=10_000)
    page.wait_for_selector('[data-testid="msg-operator"]', timeout=10_000)
    assert page.locator('[data-testid="msg-operator"]').count() == 1
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)

    page.fill('[data-testid="tags"]', "sim, activation")
    page.click('[data-testid="resolve"]')
    page.wait_for_selector('[data-testid="chat"]', state="hidden")
    page.wait_for_selector(f'[data-testid="mine-item"][data-id="{cid}"]', state="detached")

    assert stream.operator_messages() == [sent]  # exactly the one that was sent, once
    with database.session() as session:
        resolution = session.scalars(select(Resolution)).one()
        assert (resolution.outcome, resolution.tags) == ("resolved", ["sim", "activation"])
        assert resolution.answer_text == sent and resolution.answer_source_ids == ["sim-activation"]
        used = session.scalars(select(SuggestionSet)).one()
        assert (used.outcome, used.chosen_index) == ("edited", 0)
        assert 0.5 < (used.edit_similarity or 0) < 1.0
    assert errors == [], json.dumps(errors, ensure_ascii=False)


def test_the_console_page_is_not_frameable_and_asks_for_a_key(
    server: tuple[str, Database, dict[str, str]], browser: Any
) -> None:
    base, _, keys = server
    response = httpx.get(f"{base}/console")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert all(key not in response.text for key in keys.values())  # the page carries no key
    page = browser.new_page(locale="en-US")
    page.goto(f"{base}/console")
    page.wait_for_selector("body[data-ready=login]")
    page.fill('[data-testid="key"]', keys["customer"])
    page.click('[data-testid="connect"]')
    page.wait_for_selector('[data-testid="error"]:not([hidden])')
    assert "not an operator key" in page.locator('[data-testid="error"]').inner_text()
    assert page.locator('[data-testid="desk"]').is_hidden()

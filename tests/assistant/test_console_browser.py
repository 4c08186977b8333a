"""The operator console in headless Chromium against a real uvicorn server and a live customer stream.

An operator signs in, claims an escalated chat, edits a suggested reply, sends it and undoes it within
the window, sends it again, and resolves; the customer's server-sent event stream, open the whole
time, receives exactly the one message that was sent. Two operators' consoles follow the desk through
the live event streams alone (the safety refresh set to ten minutes): a new hand-off and the customer's
messages appear without a reload; an internal note stays away from the customer; a transfer moves the
chat to the other console, which hands it back to the bot. Debian's ``chromium`` driven by Playwright
(``executable_path``; never ``playwright install``); the production app with the real responder.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
Running = tuple[str, Database, dict[str, str]]  # the server's URL, its database, its keys


@contextmanager
def _serve(tmp_path: Path, responder: Any, **operators: Any) -> Iterator[Running]:
    """The app under uvicorn in a thread, with a short undo window; yields its URL, database and keys."""
    operators = {"undo_seconds": UNDO_SECONDS, "delivery_poll_seconds": 0.2, **operators}
    settings = Settings(home=tmp_path, port=free_port(), operators=operators)
    upgrade(settings)
    database = Database.connect(settings.database_url)
    with database.session() as session:
        keys = {
            "customer": issue_key(session, "customer", "shop").secret,
            "operator": issue_key(session, "operator", "Sato").secret,
            "operator2": issue_key(session, "operator", "Suzuki").secret,
        }
    app = create_app(settings, Services(settings=settings, database=database, responder=responder))
    try:
        with uvicorn_in_thread(app, settings.port) as base_url:
            yield base_url, database, keys
    finally:
        database.dispose()


@pytest.fixture
def server(tmp_path: Path, responder: Any) -> Iterator[tuple[str, Database, dict[str, str]]]:
    with _serve(tmp_path, responder) as running:
        yield running


@pytest.fixture
def short_streams(tmp_path: Path, responder: Any) -> Iterator[tuple[str, Database, dict[str, str]]]:
    """The same app, its event streams ending after 1.5 s (clients must reconnect and resume)."""
    with _serve(tmp_path, responder, stream_seconds=1.5, recheck_seconds=60) as running:
        yield running


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


def _sign_in(browser: Any, base: str, key: str, locale: str, errors: list[str]) -> Any:
    """A console page signed in with ``key``, its desk stream live, with a ten-minute safety refresh."""
    page = browser.new_page(locale=locale)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{base}/console?refresh_s=600")
    page.wait_for_selector("body[data-ready=login]")
    page.fill('[data-testid="key"]', key)
    page.click('[data-testid="connect"]')
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector('[data-testid="live"][data-state="live"]')
    return page


LIVE_MS = 3_000  # well inside the ten-minute safety refresh: only the event streams can deliver this fast


def test_two_consoles_follow_the_desk_live_note_transfer_and_hand_back(
    server: tuple[str, Database, dict[str, str]], browser: Any
) -> None:
    base, database, keys = server
    errors: list[str] = []
    sato = _sign_in(browser, base, keys["operator"], "ja-JP", errors)
    requests: list[str] = []
    sato.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    assert sato.evaluate("document.documentElement.lang") == "ja"
    assert sato.locator('[data-testid="handback"]').inner_text() == "ボットに戻す"
    assert "お客様には表示されません" in sato.locator('[data-testid="notes-warning"]').inner_text()
    sato.click('[data-testid="lang"]')
    assert sato.locator('[data-testid="handback"]').inner_text() == "Hand back to the bot"
    sato.click('[data-testid="lang"]')
    assert sato.locator('[data-testid="release"]').inner_text() == "待ち行列に戻す"
    sato.check('[data-testid="on-shift"]')
    sato.locator('[data-testid="shift-count"]').filter(has_text="1人").wait_for()
    suzuki = _sign_in(browser, base, keys["operator2"], "en-US", errors)
    assert suzuki.locator('[data-testid="handback"]').inner_text() == "Hand back to the bot"
    suzuki.check('[data-testid="on-shift"]')
    suzuki.locator('[data-testid="shift-count"]').filter(has_text="2 on shift").wait_for()

    # A new hand-off reaches the open console through its stream, and so do the customer's messages.
    cid = _escalated_conversation(base, keys["customer"])
    stream = CustomerStream(base, cid, keys["customer"])
    sato.wait_for_selector(f'[data-testid="queue-item"][data-id="{cid}"]', timeout=LIVE_MS)
    sato.locator(f'[data-testid="queue-item"][data-id="{cid}"] [data-testid="claim"]').click()
    sato.wait_for_selector(f'[data-testid="mine-item"][data-id="{cid}"]', timeout=LIVE_MS)
    sato.locator('[data-testid="msg-customer"]').nth(1).wait_for()  # the hand-off packet's transcript
    customer = {"Authorization": f"Bearer {keys['customer']}"}
    said = httpx.post(
        f"{base}/v1/conversations/{cid}/messages", json={"text": "eSIMも同じ？"}, headers=customer
    )
    assert said.status_code == 200 and said.json()["reply"] is None  # a person owns it: the bot is silent
    sato.locator('[data-testid="msg-customer"]').filter(has_text="eSIMも同じ？").wait_for(timeout=LIVE_MS)

    # An internal note: listed for operators, never in what the customer can read.
    note = "本人確認済み。料金の話は慎重に"
    sato.fill('[data-testid="note-text"]', note)
    sato.click('[data-testid="add-note"]')
    sato.locator('[data-testid="note"]').filter(has_text=note).wait_for()
    assert "Sato" in sato.locator('[data-testid="note"]').inner_text()

    # Transfer to Suzuki: the chat leaves Sato's console and appears in Suzuki's, note included.
    sato.select_option('[data-testid="transfer-to"]', label="Suzuki")
    sato.click('[data-testid="transfer"]')
    sato.wait_for_selector('[data-testid="chat"]', state="hidden")
    sato.wait_for_selector(f'[data-testid="mine-item"][data-id="{cid}"]', state="detached", timeout=LIVE_MS)
    suzuki.click(f'[data-testid="mine-item"][data-id="{cid}"]', timeout=LIVE_MS)
    suzuki.locator('[data-testid="note"]').filter(has_text=note).wait_for()
    assert suzuki.locator('[data-testid="msg-customer"]').count() == 3  # rendered with the note
    assert suzuki.locator('[data-testid="notice"]').is_hidden()

    # Hand back to the bot: the conversation is open again and the bot answers the next message.
    suzuki.click('[data-testid="handback"]')
    suzuki.wait_for_selector('[data-testid="chat"]', state="hidden")
    suzuki.wait_for_selector(f'[data-testid="mine-item"][data-id="{cid}"]', state="detached", timeout=LIVE_MS)
    transcript = httpx.get(f"{base}/v1/conversations/{cid}", headers=customer)
    assert transcript.json()["status"] == "open" and note not in transcript.text
    again = httpx.post(
        f"{base}/v1/conversations/{cid}/messages", json={"text": "開通方法は？"}, headers=customer
    )
    assert again.json()["reply"] is not None  # the bot speaks again
    assert httpx.post(f"{base}/v1/conversations/{cid}/close", headers=customer).status_code == 200
    stream.thread.join(timeout=30)
    assert note not in stream.body and "本人確認" not in stream.body
    assert any(r.startswith("POST") and r.endswith("/notes") for r in requests), requests
    polls = [r for r in requests if r.endswith(("/queue", "/conversations"))]
    assert polls == [], polls  # no GET of the lists: everything above came through the streams
    with database.session() as session:
        assert session.scalars(select(Resolution)).one().path == "bot"
    assert errors == [], json.dumps(errors, ensure_ascii=False)


def test_streams_that_end_are_resumed_with_last_event_id(
    short_streams: tuple[str, Database, dict[str, str]], browser: Any
) -> None:
    base, _, keys = short_streams
    errors: list[str] = []
    cid = _escalated_conversation(base, keys["customer"])
    page = _sign_in(browser, base, keys["operator"], "en-US", errors)
    resumed: list[str | None] = []
    page.on(
        "request",
        lambda r: resumed.append(r.headers.get("last-event-id")) if r.url.endswith(f"{cid}/events") else None,
    )
    page.locator(f'[data-testid="queue-item"][data-id="{cid}"] [data-testid="claim"]').click()
    page.wait_for_selector(f'[data-testid="mine-item"][data-id="{cid}"]')
    page.wait_for_timeout(3_500)  # the chat's stream ended and was reopened at least once
    customer = {"Authorization": f"Bearer {keys['customer']}"}
    seen = len(httpx.get(f"{base}/v1/conversations/{cid}", headers=customer).json()["messages"])
    assert len(resumed) >= 2 and set(resumed) == {str(seen)}, resumed  # after the last message shown
    for text in ("まだですか", "急いでいます"):
        said = httpx.post(f"{base}/v1/conversations/{cid}/messages", json={"text": text}, headers=customer)
        assert said.status_code == 200
    page.locator('[data-testid="msg-customer"]').filter(has_text="急いでいます").wait_for(timeout=LIVE_MS)
    page.wait_for_timeout(2_000)  # more reconnects: nothing may be shown twice
    seqs = page.eval_on_selector_all('[data-testid="log"] li', "items => items.map((i) => i.dataset.seq)")
    assert seqs == [str(n) for n in range(1, seen + 3)], seqs
    assert resumed[-1] == str(seen + 2)
    second = _escalated_conversation(base, keys["customer"])  # the desk stream reconnected too
    page.wait_for_selector(f'[data-testid="queue-item"][data-id="{second}"]', timeout=LIVE_MS)
    assert page.locator('[data-testid="live"]').get_attribute("data-state") in ("live", "reconnecting")
    assert errors == [], json.dumps(errors, ensure_ascii=False)

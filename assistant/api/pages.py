"""The pages: the customer chat widget (with the publishable widget key filled in) and the operator
console; their static files are served from ``assistant/web``."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from assistant.api.deps import ServicesDep
from assistant.keys import published_widget_key

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
router = APIRouter(tags=["widget"], include_in_schema=False)
# Only our own script, styles and API; the page may be framed by the sites that embed the widget.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'"
    ),
}


@cache
def _template() -> str:
    return (WEB_DIR / "widget.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
@router.get("/widget", response_class=HTMLResponse)
def widget_page(services: ServicesDep) -> HTMLResponse:
    """The chat widget. Its key is a publishable customer key: public by design, customer role only."""
    with services.database.session() as session:
        key = published_widget_key(session) or ""
    page = _template().replace("{{WIDGET_KEY}}", html.escape(key, quote=True))
    return HTMLResponse(page, headers=_PAGE_HEADERS)


# The operator console holds an operator key: never framed by another site, no referrer leaks.
_CONSOLE_HEADERS = _PAGE_HEADERS | {
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": _PAGE_HEADERS["Content-Security-Policy"] + "; frame-ancestors 'none'",
}


@router.get("/console", response_class=HTMLResponse)
def console_page() -> HTMLResponse:
    """The operator console: the queue, a conversation, suggested replies, send with undo, resolve.

    The page carries no key: the operator signs in with their own operator key (kept in the tab).
    """
    return HTMLResponse((WEB_DIR / "console.html").read_text(encoding="utf-8"), headers=_CONSOLE_HEADERS)


# The voice-of-the-customer report holds a staff key; its charts are PNG blobs fetched with that key.
_VOC_HEADERS = _CONSOLE_HEADERS | {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
}


@router.get("/voc", response_class=HTMLResponse)
def voc_page() -> HTMLResponse:
    """The VoC report: KPIs by day and path, charts (PNG export), top topics, trend alerts.

    The page carries no key: staff sign in with an operator or admin key (kept in the tab).
    """
    return HTMLResponse((WEB_DIR / "voc.html").read_text(encoding="utf-8"), headers=_VOC_HEADERS)

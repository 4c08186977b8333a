"""The customer chat widget page, with the publishable widget key filled in, and its static files."""

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

"""Extractive answers: the FAQ answer or manual passage, trimmed at a sentence end, with citations.

The default answer mode (no generative model is fit to answer customers offline, see MODELS.md): the
text the support team wrote, cut at a sentence boundary under a length budget, plus the canned
replies the bot sends when it asks a clarifying question or hands over to a person.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from index.documents import Chunk, SearchHit

Language = Literal["ja", "en"]

# Where a sentence may end: Japanese 。！？ (and ASCII !? after them), runs like "!!" or "？！", any
# closing brackets or quotes after the mark; an English period only before whitespace or the end, so
# "3.5" does not split, nor the "1." of a numbered list item. A line break also ends a unit (lists in
# FAQ answers); the text is cut before it.
_SENTENCE_END = re.compile(r"(?:[。！？!?]+|(?<!^\d)(?<!^\d\d)\.(?=\s|$))[」』）)\"'”’]*|(?=\n)", re.M)
_ELLIPSIS = "…"
DEFAULT_MAX_CHARS = 400


@dataclass(frozen=True)
class Citation:
    """Where an answer came from: shown to the customer as a source link, stored for audit."""

    number: int  # the [n] marker in the answer
    title: str
    url: str | None
    chunk_id: str
    source_id: str


@dataclass(frozen=True)
class Answer:
    """The text for the customer and its sources."""

    text: str
    citations: tuple[Citation, ...]
    truncated: bool = False


def citation_for(chunk: Chunk, number: int = 1) -> Citation:
    """The citation of a chunk: the FAQ question or manual heading path as the title."""
    return Citation(
        number=number, title=chunk.display_title, url=chunk.url, chunk_id=chunk.id, source_id=chunk.source_id
    )


def citations_for(hits: Sequence[SearchHit]) -> tuple[Citation, ...]:
    """Numbered citations ([1], [2], ...) for passages in the order given."""
    return tuple(citation_for(h.chunk, n) for n, h in enumerate(hits, start=1))


def passage_text(chunk: Chunk) -> str:
    """The text a customer should read: an FAQ entry's answer, or the manual passage."""
    return (chunk.answer or chunk.text).strip()


def trim_to_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, bool]:
    """Cut ``text`` at the last sentence end within ``max_chars``; say whether anything was cut.

    When even the first sentence is too long, cut at the last space (English) or at the budget
    (Japanese has no spaces) and add an ellipsis, so the customer sees the text was shortened.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars!r}")
    text = text.strip()
    if len(text) <= max_chars:
        return text, False
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, max_chars + 1) if 0 < m.end() <= max_chars]
    if ends:
        return text[: ends[-1]].rstrip(), True
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip() + _ELLIPSIS, True


def extractive_answer(hit: SearchHit, max_chars: int = DEFAULT_MAX_CHARS) -> Answer:
    """The best hit's FAQ answer or manual passage, trimmed, citing that hit."""
    text, truncated = trim_to_sentences(passage_text(hit.chunk), max_chars)
    return Answer(text=text, citations=(citation_for(hit.chunk),), truncated=truncated)


_CLARIFY = {
    "ja": ("どちらについてのご質問でしょうか。番号か内容でお知らせください。", "{n}. {title}"),
    "en": ("Which of these is your question about? Reply with the number or a few words.", "{n}. {title}"),
}

_HANDOFF = {
    ("ja", "escalate"): "担当者におつなぎします。順番にご案内しますので、このままお待ちください。",
    ("en", "escalate"): "I'm connecting you with a member of our support team. Please stay in this chat.",
    ("ja", "take_message"): (
        "ただいま担当者がご対応できません。このメッセージはお預かりし、担当者が確認してからご連絡します。"
    ),
    ("en", "take_message"): (
        "Our support team can't take this chat right now. We've kept your message and a member of the "
        "team will get back to you."
    ),
}


def clarification(hits: Sequence[SearchHit], language: Language) -> Answer:
    """A question offering the customer the candidate entries to choose from, each cited."""
    intro, line = _CLARIFY[language]
    options = [line.format(n=n, title=h.chunk.display_title) for n, h in enumerate(hits, start=1)]
    return Answer(text="\n".join([intro, *options]), citations=citations_for(hits))


def handoff_message(decision: Literal["escalate", "take_message"], language: Language) -> str:
    """What the customer reads when a person takes over now or later."""
    return _HANDOFF[(language, decision)]

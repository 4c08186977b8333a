"""Suggested replies for operators: up to three drafts for the customer's latest message, with citations.

Each draft comes from a different knowledge-base source, found with the same conversation-aware
query the bot uses (``build_search_query``): extractive by default (the FAQ answer or manual
passage, like the bot's own answers), written by the chat model when one is configured. A draft the
model cannot ground in its passage (no ``[1]``, or ``NO_DRAFT``) is replaced by the extractive one;
any chat-model failure gives the extractive drafts.

Stored as ``suggestion_sets``; when the operator's message is delivered, the set records whether a
draft was used as is, edited (with how similar the sent text stayed) or ignored.

Errors: ``SuggestionSetNotFoundError``, ``DraftIndexError`` (no such draft in the set) and
``NothingToSuggestError`` (the conversation has no customer message yet).
"""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rapidfuzz import fuzz
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from assistant.answer import Citation, citation_for, extractive_answer, passage_text
from assistant.conversation import build_search_query
from assistant.llm import ChatMessage, ChatModel, ChatModelError
from assistant.models import Message, SuggestionSet
from assistant.transcripts import HISTORY_ROLES, citation_record
from index.documents import SearchHit, distinct_sources
from index.search import KnowledgeIndex
from index.textja import Language, detect_language
from prompts import PromptPair

log = logging.getLogger(__name__)

Outcome = Literal["used", "edited", "ignored"]
MAX_DRAFTS = 3
NO_DRAFT = "NO_DRAFT"
_CITATION = re.compile(r"\[1\]")
_SPACES = re.compile(r"\s+")
_ROLE_FOR_PROMPT = {"customer": "customer", "bot": "assistant", "operator": "operator"}


class SuggestionSetNotFoundError(LookupError):
    """No suggestion set with this id in the conversation."""


class DraftIndexError(ValueError):
    """The set has no draft at this index."""


class NothingToSuggestError(LookupError):
    """The conversation has no customer message to reply to."""


@dataclass(frozen=True)
class Draft:
    """One suggested reply, grounded in one source."""

    text: str
    citations: tuple[Citation, ...]
    source_id: str
    generated: bool = False


class Suggester:
    """Drafts replies from one knowledge index, optionally written by a chat model."""

    def __init__(
        self,
        index: KnowledgeIndex,
        chat: ChatModel | None = None,
        prompts: PromptPair | None = None,
        *,
        company: str = "our company",
        max_drafts: int = MAX_DRAFTS,
        search_k: int = 10,
        max_chars: int = 400,
    ) -> None:
        if not 1 <= max_drafts <= MAX_DRAFTS:
            raise ValueError(f"max_drafts must be between 1 and {MAX_DRAFTS}, got {max_drafts!r}")
        self.index = index
        self.chat = chat
        self.prompts = prompts or PromptPair.load("suggest")
        self.company = company
        self.max_drafts = max_drafts
        self.search_k = search_k
        self.max_chars = max_chars

    def drafts(
        self, history: Sequence[tuple[str, str]], message: str, locale: str = "ja"
    ) -> tuple[Draft, ...]:
        """Up to ``max_drafts`` drafts for ``message`` after ``history`` (oldest first), distinct sources."""
        query = build_search_query(history, message)
        hits = distinct_sources(self.index.search(query.text, self.search_k))[: self.max_drafts]
        extractive = tuple(self._extractive(h) for h in hits)
        if self.chat is None or not hits:
            return extractive
        default: Language = "ja" if locale.lower().startswith("ja") else "en"
        language = detect_language(message, default=default)
        try:
            return tuple(
                self._generated(self.chat, hit, history, message, language) or fallback
                for hit, fallback in zip(hits, extractive, strict=True)
            )
        except ChatModelError as exc:
            log.warning("chat model failed; suggesting extractive drafts: %s", exc)
            return extractive

    def _extractive(self, hit: SearchHit) -> Draft:
        answer = extractive_answer(hit, self.max_chars)
        return Draft(answer.text, answer.citations, hit.chunk.source_id)

    def _generated(
        self,
        chat: ChatModel,
        hit: SearchHit,
        history: Sequence[tuple[str, str]],
        message: str,
        language: Language,
    ) -> Draft | None:
        citation = citation_for(hit.chunk, 1)
        passage = {"number": 1, "title": citation.title, "url": citation.url, "text": passage_text(hit.chunk)}
        turns = [{"role": _ROLE_FOR_PROMPT.get(r, r), "text": t} for r, t in history[-6:]]
        system = self.prompts.system.render(language=language, company=self.company, max_sentences=4)
        user = self.prompts.user.render(passage=passage, history=turns, question=message)
        text = chat.complete([ChatMessage("system", system), ChatMessage("user", user)]).strip()
        if not text or NO_DRAFT in text or not _CITATION.search(text):
            return None  # not grounded in the passage: the team's own words instead
        return Draft(text, (citation,), hit.chunk.source_id, generated=True)


# --- how much the operator changed a draft ------------------------------------------------------------


def _normalized(text: str) -> str:
    # Spacing carries no meaning between Japanese words and little elsewhere: drop it all.
    return _SPACES.sub("", unicodedata.normalize("NFKC", text))


def edit_similarity(draft: str, sent: str) -> float:
    """How much of ``draft`` survived in ``sent``, 0..1 (1 = the same text).

    Character-level (normalized Indel similarity after NFKC, ignoring whitespace): Japanese has no
    spaces between words, so characters are the unit that works for both languages.
    """
    a, b = _normalized(draft), _normalized(sent)
    if a == b:
        return 1.0
    return round(float(fuzz.ratio(a, b)) / 100.0, 4)


def classify_edit(draft: str, sent: str) -> tuple[Outcome, float]:
    """``("used", 1.0)`` when sent as drafted (up to spacing and width), else ``("edited", similarity)``."""
    similarity = edit_similarity(draft, sent)
    return ("used" if similarity == 1.0 else "edited"), similarity


# --- stored suggestion sets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SuggestionRequest:
    """What drafting needs from the database: the latest customer message and what came before."""

    conversation_id: uuid.UUID
    message_id: int
    message: str
    history: tuple[tuple[str, str], ...]
    locale: str
    existing: SuggestionSet | None  # a set already drafted for this message


def draft_record(draft: Draft) -> dict[str, Any]:
    """A draft as stored in the set's JSON column."""
    return {
        "text": draft.text,
        "citations": [citation_record(c) for c in draft.citations],
        "source_id": draft.source_id,
        "generated": draft.generated,
    }


def suggestion_request(
    session: Session, conversation_id: uuid.UUID, locale: str, history_limit: int = 12
) -> SuggestionRequest:
    """The latest customer message of the conversation, its history and any set drafted for it."""
    latest = session.scalar(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.role == "customer")
        .order_by(Message.seq.desc())
        .limit(1)
    )
    if latest is None:
        raise NothingToSuggestError(f"conversation {conversation_id} has no customer message yet")
    earlier = session.execute(
        select(Message.role, Message.text)
        .where(
            Message.conversation_id == conversation_id,
            Message.seq < latest.seq,
            Message.role.in_(HISTORY_ROLES),
        )
        .order_by(Message.seq.desc())
        .limit(history_limit)
    ).all()
    existing = session.scalar(
        select(SuggestionSet)
        .where(SuggestionSet.for_message_id == latest.id)
        .order_by(SuggestionSet.id.desc())
        .limit(1)
    )
    history = tuple((r.role, r.text) for r in reversed(earlier))
    return SuggestionRequest(conversation_id, latest.id, latest.text, history, locale, existing)


def store_suggestions(
    session: Session, request: SuggestionRequest, drafts: Sequence[Draft], now: datetime
) -> SuggestionSet:
    """Keep a drafted set for the request's message."""
    row = SuggestionSet(
        conversation_id=request.conversation_id,
        for_message_id=request.message_id,
        drafts=[draft_record(d) for d in drafts],
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def find_suggestion_set(session: Session, conversation_id: uuid.UUID, set_id: int) -> SuggestionSet:
    """The set, if it belongs to the conversation."""
    row = session.get(SuggestionSet, set_id)
    if row is None or row.conversation_id != conversation_id:
        raise SuggestionSetNotFoundError(f"no suggestion set {set_id} in conversation {conversation_id}")
    return row


def check_draft_index(row: SuggestionSet, draft_index: int | None) -> None:
    """Refuse a draft index the set does not have."""
    if draft_index is not None and not 0 <= draft_index < len(row.drafts):
        raise DraftIndexError(
            f"suggestion set {row.id} has {len(row.drafts)} drafts; there is no draft {draft_index}"
        )


def record_outcome(
    session: Session,
    conversation_id: uuid.UUID,
    set_id: int | None,
    draft_index: int | None,
    sent: str,
    written_at: datetime,
) -> None:
    """After an operator message went out: the chosen set is used/edited/ignored; every other set the
    operator had seen when writing it (drafted before ``written_at``) and left open is ignored.

    Only sets still without an outcome change, so a second message never rewrites the first verdict.
    """
    if set_id is not None:
        row = session.get(SuggestionSet, set_id)
        if row is not None and row.outcome is None:
            if draft_index is not None and 0 <= draft_index < len(row.drafts):
                outcome, similarity = classify_edit(str(row.drafts[draft_index]["text"]), sent)
                row.outcome, row.chosen_index, row.edit_similarity = outcome, draft_index, similarity
            else:
                row.outcome = "ignored"
            session.flush()
    session.execute(
        update(SuggestionSet)
        .where(
            SuggestionSet.conversation_id == conversation_id,
            SuggestionSet.outcome.is_(None),
            SuggestionSet.created_at <= written_at,
        )
        .values(outcome="ignored")
        .execution_options(synchronize_session=False)
    )
    session.flush()

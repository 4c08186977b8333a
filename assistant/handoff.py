"""The hand-off packet: everything an operator needs to take a conversation over without asking the
customer to start again: the transcript, who the customer is, what the bot tried (with sources and
confidence), why it handed over, internal notes, and a short summary.

The summary is extractive by default: the customer's own first and latest words, what the bot
answered from, and the hand-off reasons. With a chat model configured it is generated
(``prompts/summary.*.j2``); a model failure falls back to the extractive summary, never to an error.
Generated summaries are cached per conversation and last message number, so reopening a packet does
not call the model again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.customers import CustomerIdentity, CustomerLookup, identify
from assistant.llm import ChatMessage, ChatModel, ChatModelError
from assistant.models import Conversation, Escalation, Message, OperatorNote
from assistant.operators import notes_of, queue_position
from assistant.transcripts import HISTORY_ROLES, messages_of, priority_of
from prompts import PromptPair

log = logging.getLogger(__name__)

QUOTE_CHARS = 120
SUMMARY_MESSAGES = 30  # the latest messages a generated summary sees


@dataclass(frozen=True)
class AttemptedAnswer:
    """One of the bot's replies: what it said, how sure it was, from which sources."""

    message_id: int
    seq: int
    text: str
    decision: str | None
    confidence: float | None
    reasons: tuple[str, ...]
    citations: tuple[dict[str, Any], ...]
    question: str | None  # the customer message it answered


@dataclass(frozen=True)
class Summary:
    """A short account of the chat; ``model`` names the chat model when it was generated."""

    text: str
    method: Literal["extractive", "generated"]
    model: str | None = None
    prompt_version: str | None = None


@dataclass(frozen=True)
class HandoffPacket:
    """The operator's view of one conversation."""

    conversation: Conversation
    customer: CustomerIdentity | None
    transcript: tuple[Message, ...]
    attempts: tuple[AttemptedAnswer, ...]
    decision: str | None  # the latest hand-off decision: "escalate" or "take_message"
    reasons: tuple[str, ...]  # every hand-off reason, first occurrence first
    notes: tuple[OperatorNote, ...]
    queue_position: int | None
    summary: Summary


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"


def extractive_summary(
    transcript: Sequence[Message], attempts: Sequence[AttemptedAnswer], reasons: Sequence[str], locale: str
) -> Summary:
    """The customer's first and latest messages, what the bot answered from, why it handed over."""
    asked = [m.text for m in transcript if m.role == "customer"]
    answered = [a for a in attempts if a.decision == "answer"]
    titles = list(dict.fromkeys(c["title"] for a in answered for c in a.citations[:1]))
    ja = locale.lower().startswith("ja")
    parts = []
    if asked:
        parts.append(("お客様の用件: 「{}」" if ja else 'Customer asked: "{}"').format(_quote(asked[0])))
    if len(asked) > 1:
        parts.append(("最新のメッセージ: 「{}」" if ja else 'Latest message: "{}"').format(_quote(asked[-1])))
    if answered:
        sources = "、".join(titles) if ja else ", ".join(titles)
        parts.append(
            f"ボットの回答: {len(answered)}件（{sources}）"
            if ja
            else f"Bot answered {len(answered)} time(s) ({sources})"
        )
    if reasons:
        parts.append(("引き継ぎ理由: " if ja else "Handed over because: ") + ", ".join(reasons))
    separator = "。" if ja else ". "
    text = (
        separator.join(parts) + ("。" if ja else ".")
        if parts
        else ("（メッセージなし）" if ja else "(no messages)")
    )
    return Summary(text=text, method="extractive")


class Summarizer:
    """Summaries for packets: generated with ``chat`` when there is one, else extractive."""

    def __init__(self, chat: ChatModel | None, cache_size: int = 512) -> None:
        self.chat = chat
        self._prompts = PromptPair.load("summary")
        self._cache: OrderedDict[tuple[uuid.UUID, int], Summary] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def prompt_version(self) -> str:
        """The summary prompts' combined version."""
        return self._prompts.version

    def summarize(
        self,
        conversation: Conversation,
        transcript: Sequence[Message],
        attempts: Sequence[AttemptedAnswer],
        reasons: Sequence[str],
    ) -> Summary:
        """The conversation's summary (see the module docstring)."""
        extractive = extractive_summary(transcript, attempts, reasons, conversation.locale)
        if self.chat is None or not transcript:
            return extractive
        key = (conversation.id, conversation.last_seq)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        summary = self._generate(conversation, transcript, reasons) or extractive
        if summary.method == "generated":
            with self._lock:
                self._cache[key] = summary
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return summary

    def _generate(
        self, conversation: Conversation, transcript: Sequence[Message], reasons: Sequence[str]
    ) -> Summary | None:
        assert self.chat is not None
        language = "ja" if conversation.locale.lower().startswith("ja") else "en"
        shown = [{"role": m.role, "text": m.text} for m in transcript if m.role in HISTORY_ROLES]
        messages = [
            ChatMessage("system", self._prompts.system.render(language=language)),
            ChatMessage(
                "user", self._prompts.user.render(transcript=shown[-SUMMARY_MESSAGES:], reasons=list(reasons))
            ),
        ]
        try:
            text = self.chat.complete(messages).strip()
        except ChatModelError as exc:
            log.warning("summary generation failed, using the extractive summary: %s", exc)
            return None
        if not text:
            return None
        return Summary(
            text=text, method="generated", model=self.chat.name, prompt_version=self.prompt_version
        )


def _attempts(transcript: Sequence[Message]) -> tuple[AttemptedAnswer, ...]:
    by_id = {m.id: m for m in transcript}
    return tuple(
        AttemptedAnswer(
            message_id=m.id,
            seq=m.seq,
            text=m.text,
            decision=m.decision,
            confidence=m.confidence,
            reasons=tuple(m.reasons or ()),
            citations=tuple(m.citations or ()),
            question=by_id[m.reply_to_id].text if m.reply_to_id in by_id else None,
        )
        for m in transcript
        if m.role == "bot"
    )


def build_packet(
    session: Session, conversation: Conversation, summarizer: Summarizer, lookup: CustomerLookup | None
) -> HandoffPacket:
    """Assemble the packet; the customer lookup hook may raise the conversation's priority (VIP)."""
    member_id = conversation.customer.member_id if conversation.customer else None
    customer = identify(session, member_id, lookup)
    if customer is not None and customer.vip and conversation.status == "escalated":
        conversation.priority = max(conversation.priority, priority_of(conversation.customer))
        session.flush()
    transcript = tuple(messages_of(session, conversation.id))
    escalations = session.scalars(
        select(Escalation).where(Escalation.conversation_id == conversation.id).order_by(Escalation.id)
    ).all()
    reasons = tuple(dict.fromkeys(r for e in escalations for r in e.reasons))
    attempts = _attempts(transcript)
    return HandoffPacket(
        conversation=conversation,
        customer=customer,
        transcript=transcript,
        attempts=attempts,
        decision=escalations[-1].decision if escalations else None,
        reasons=reasons,
        notes=tuple(notes_of(session, conversation.id)),
        queue_position=queue_position(session, conversation),
        summary=summarizer.summarize(conversation, transcript, attempts, reasons),
    )

"""Post-chat surveys: one per closed conversation, linked to its path and the FAQ entries it cited.

Scales: CSAT 1-6 where 5 is "very satisfied" and 6 one level above it, 「感動した」 (delighted), so the
top of the usual 5-point scale is not a ceiling; CES 0-10 where higher means easier; NPS 0-10.
``resolved`` is the customer's own yes/no; ``reasons`` come from a fixed list (``REASONS``).

The path is "operator" when the operator workspace recorded an operator resolution
(``resolutions.path``) or an operator wrote in the conversation, else "bot" (a resolution written for
a customer's close does not see a message an operator wrote without claiming the chat). Cited entries
are the source ids of the bot's citations, in order of first citation.

Errors: ``SurveyError`` and its children ``ConversationNotClosedError`` and
``SurveyAlreadyAnsweredError``; bad values raise ``ValueError`` (quoting the value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from assistant.models import Conversation, Message, Resolution, SurveyResponse, utcnow

Path = Literal["bot", "operator"]
CSAT_LABELS = {
    1: "very_dissatisfied",
    2: "dissatisfied",
    3: "neutral",
    4: "satisfied",
    5: "very_satisfied",
    6: "delighted",  # 「感動した」: one level above very satisfied
}
REASONS = (
    "faq_hard_to_understand",
    "answer_wrong",
    "answer_not_found",
    "could_not_reach_person",
    "took_too_long",
    "had_to_repeat",
    "other",
)


class SurveyError(Exception):
    """A survey that cannot be recorded."""


class ConversationNotClosedError(SurveyError):
    """Surveys are for closed conversations only."""


class SurveyAlreadyAnsweredError(SurveyError):
    """The conversation already has its survey."""


def _check_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be {low}-{high}, got {value!r}")


@dataclass(frozen=True)
class SurveyAnswers:
    """What the customer answered; every question is optional, but not all of them at once."""

    csat: int | None = None
    ces: int | None = None
    nps: int | None = None
    resolved: bool | None = None
    reasons: tuple[str, ...] = field(default=())
    comment: str | None = None

    def __post_init__(self) -> None:
        _check_range("csat", self.csat, 1, 6)
        _check_range("ces", self.ces, 0, 10)
        _check_range("nps", self.nps, 0, 10)
        unknown = [r for r in self.reasons if r not in REASONS]
        if unknown:
            raise ValueError(f"unknown reason(s) {unknown}; choose from {list(REASONS)}")
        answered = (self.csat, self.ces, self.nps, self.resolved, self.comment)
        if all(v is None for v in answered) and not self.reasons:
            raise ValueError("the survey has no answer at all")


def conversation_path(session: Session, conversation_id: object) -> Path:
    """'operator' when the resolution says so or an operator wrote in the chat, else 'bot'."""
    path = session.scalar(select(Resolution.path).where(Resolution.conversation_id == conversation_id))
    if path == "operator":
        return "operator"
    spoke = session.scalar(
        select(exists().where(Message.conversation_id == conversation_id, Message.role == "operator"))
    )
    return "operator" if spoke else "bot"


def cited_sources(session: Session, conversation_id: object) -> list[str]:
    """Source ids the bot cited in the conversation, in order of first citation."""
    rows = session.scalars(
        select(Message.citations)
        .where(Message.conversation_id == conversation_id, Message.role == "bot")
        .order_by(Message.seq)
    )
    ids = [str(c["source_id"]) for citations in rows for c in (citations or []) if c.get("source_id")]
    return list(dict.fromkeys(ids))


def record_survey(session: Session, conversation: Conversation, answers: SurveyAnswers) -> SurveyResponse:
    """Store the survey of a closed conversation; a second one is refused."""
    if conversation.status != "closed":
        raise ConversationNotClosedError(
            f"conversation {conversation.id} is {conversation.status}; surveys follow a closed conversation"
        )
    taken = select(SurveyResponse.id).where(SurveyResponse.conversation_id == conversation.id)
    if session.scalar(taken) is not None:
        raise SurveyAlreadyAnsweredError(f"conversation {conversation.id} already has its survey")
    response = SurveyResponse(
        conversation_id=conversation.id,
        path=conversation_path(session, conversation.id),
        csat=answers.csat,
        ces=answers.ces,
        nps=answers.nps,
        resolved=answers.resolved,
        reasons=list(dict.fromkeys(answers.reasons)),
        comment=answers.comment,
        cited_source_ids=cited_sources(session, conversation.id),
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():  # a concurrent second survey loses on the unique constraint
            session.add(response)
    except IntegrityError as exc:
        raise SurveyAlreadyAnsweredError(f"conversation {conversation.id} already has its survey") from exc
    return response

"""Request and response bodies of the voice-of-the-customer endpoints (``assistant.api.voc``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic.json_schema import SkipJsonSchema

from assistant.api.schemas import VISIBLE_PATTERN, Identifier, MessageText, clean_text
from assistant.models import SurveyResponse
from assistant.voc.alerts import AlertRecord
from assistant.voc.audit import AuditReport, EntryUse
from assistant.voc.gaps import Gap
from assistant.voc.report import Report
from assistant.voc.review import ReviewRecord
from assistant.voc.surveys import REASONS

Reason = Literal[REASONS]  # type: ignore[valid-type]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _clean(value: str) -> str:
    return clean_text(value)


def _whole_number(value: object) -> object:
    """JSON Schema's integers include 5.0: take it as 5 (strings and booleans stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_ANSWERS = ("csat", "ces", "nps", "resolved", "reasons", "comment")


class SurveyCreate(_Request):
    """The post-chat survey. Every question is optional; at least one must be answered."""

    # At least one answer (the schema says so too; null is accepted but documented as absent).
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"anyOf": [{"required": [name]} for name in _ANSWERS]}
    )

    csat: (
        Annotated[int, Field(ge=1, le=6, strict=True), BeforeValidator(_whole_number)] | SkipJsonSchema[None]
    ) = Field(
        default=None, description="1-5 very dissatisfied..very satisfied; 6 = 「感動した」 (delighted)."
    )
    ces: (
        Annotated[int, Field(ge=0, le=10, strict=True), BeforeValidator(_whole_number)] | SkipJsonSchema[None]
    ) = Field(default=None, description="Customer effort, 0-10: higher means easier.")
    nps: (
        Annotated[int, Field(ge=0, le=10, strict=True), BeforeValidator(_whole_number)] | SkipJsonSchema[None]
    ) = Field(default=None, description="How likely to recommend us, 0-10.")
    resolved: StrictBool | SkipJsonSchema[None] = None
    reasons: list[Reason] = Field(default_factory=list, min_length=1, max_length=len(REASONS))
    comment: (
        Annotated[str, Field(max_length=2000, pattern=VISIBLE_PATTERN), AfterValidator(_clean)]
        | SkipJsonSchema[None]
    ) = None


class SurveyOut(BaseModel):
    """A stored survey response."""

    id: int
    conversation_id: uuid.UUID
    path: str
    csat: int | None
    ces: int | None
    nps: int | None
    resolved: bool | None
    reasons: list[str]
    comment: str | None
    cited_source_ids: list[str]
    created_at: datetime

    @classmethod
    def of(cls, row: SurveyResponse) -> SurveyOut:
        """From its database row."""
        return cls(
            id=row.id, conversation_id=row.conversation_id, path=row.path, csat=row.csat, ces=row.ces,
            nps=row.nps, resolved=row.resolved, reasons=list(row.reasons), comment=row.comment,
            cited_source_ids=list(row.cited_source_ids), created_at=row.created_at,
        )  # fmt: skip


class AlertOut(BaseModel):
    """A trend alert: what surged, against what, with examples."""

    id: int
    label: str
    words: list[str]
    window_start: datetime
    window_end: datetime
    count: int
    window_messages: int
    baseline_messages: int
    baseline_count: int
    expected: float
    ratio: float
    p_value: float
    examples: list[str]
    created_at: datetime
    delivered_at: datetime | None
    delivery_error: str | None

    @classmethod
    def of(cls, alert: AlertRecord) -> AlertOut:
        """From a stored alert."""
        return cls(**{**alert.__dict__, "words": list(alert.words), "examples": list(alert.examples)})


class LinkCreate(_Request):
    """Link a failed question to the FAQ entry that answers it (it becomes a question variation)."""

    faq_id: Identifier


class DraftCreate(_Request):
    """Draft a new FAQ entry from a failed question; the answer defaults to the operator's resolution."""

    question: MessageText | None = None
    answer: MessageText | None = None


class GapOut(BaseModel):
    """A cluster of questions the bot failed, with the FAQ entry nearest to it."""

    size: int
    examples: list[str]
    message_ids: list[int]
    reasons: dict[str, int]
    nearest_faq_id: str | None
    nearest_title: str | None
    nearest_score: float | None

    @classmethod
    def of(cls, gap: Gap) -> GapOut:
        """From a found gap."""
        return cls(
            size=gap.size, examples=list(gap.examples), message_ids=list(gap.message_ids),
            reasons=dict(gap.reasons), nearest_faq_id=gap.nearest_faq_id, nearest_title=gap.nearest_title,
            nearest_score=gap.nearest_score,
        )  # fmt: skip


class EntryUseOut(BaseModel):
    """How one source fared: retrieved, shown, answered from, failed after."""

    faq_id: str = Field(description="The source id: an FAQ entry's id or a manual's (manual:...).")
    kind: str = Field(description="faq, or the kind of manual (manual, ...).")
    title: str
    retrieved: int = Field(description="Replies whose search found it, cited or not.")
    shown: int
    answered: int
    failed: int
    fail_rate: float
    updated_at: str | None

    @classmethod
    def of(cls, use: EntryUse) -> EntryUseOut:
        """From the audit's record."""
        return cls(**use.__dict__, fail_rate=round(use.fail_rate, 4))


class DuplicateOut(BaseModel):
    """Two entries asking the same thing."""

    faq_id: str
    other_id: str
    similarity: float


class AuditOut(BaseModel):
    """The content audit of the knowledge base (FAQ entries and manuals)."""

    entries: int = Field(description="FAQ entries audited.")
    manuals: int = Field(description="Manuals audited (their chunks grouped by source).")
    unseen: list[EntryUseOut] = Field(description="Never retrieved nor shown in the period.")
    unshown: list[EntryUseOut] = Field(description="Retrieved but never shown (cited) in the period.")
    failing: list[EntryUseOut]
    stale: list[EntryUseOut]
    duplicates: list[DuplicateOut]
    duplicate_threshold: float

    @classmethod
    def of(cls, report: AuditReport) -> AuditOut:
        """From an audit report."""
        return cls(
            entries=report.entries,
            manuals=report.manuals,
            unseen=[EntryUseOut.of(u) for u in report.unseen],
            unshown=[EntryUseOut.of(u) for u in report.unshown],
            failing=[EntryUseOut.of(u) for u in report.failing],
            stale=[EntryUseOut.of(u) for u in report.stale],
            duplicates=[DuplicateOut(**d.__dict__) for d in report.duplicates],
            duplicate_threshold=report.duplicate_threshold,
        )


class ReviewOut(BaseModel):
    """A failed question in the review queue."""

    id: int
    message_id: int
    conversation_id: uuid.UUID
    question: str
    reasons: list[str]
    status: str
    faq_id: str | None
    draft_question: str | None
    draft_answer: str | None
    reviewed_at: datetime | None
    applied_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, record: ReviewRecord) -> ReviewOut:
        """From a review record."""
        return cls(**{**record.__dict__, "reasons": list(record.reasons)})


class CollectedOut(BaseModel):
    """How many failed questions were newly queued."""

    queued: int


class KpisOut(BaseModel):
    """KPIs of a set of conversations (rates are shares 0-1; NPS is -100..100)."""

    conversations: int
    automation_rate: float | None
    escalation_rate: float | None
    escalation_by_reason: dict[str, float]
    surveys: int
    csat_mean: float | None
    csat_satisfied: float | None
    csat_delighted: float | None
    ces_mean: float | None
    nps: float | None


class TopicOut(BaseModel):
    """A content word and how many customer messages carried it."""

    word: str
    messages: int


class ReportOut(BaseModel):
    """The KPI report: overall, by day (in the report's time zone) and by path, with the top topics."""

    start: datetime
    end: datetime
    timezone: str
    totals: KpisOut
    by_day: dict[str, KpisOut]
    by_path: dict[str, KpisOut]
    top_topics: list[TopicOut]

    @classmethod
    def of(cls, report: Report) -> ReportOut:
        """From a built report."""
        return cls(
            start=report.start, end=report.end, timezone=report.timezone,
            totals=KpisOut(**report.totals.__dict__),
            by_day={d: KpisOut(**k.__dict__) for d, k in report.by_day.items()},
            by_path={p: KpisOut(**k.__dict__) for p, k in report.by_path.items()},
            top_topics=[TopicOut(word=w, messages=n) for w, n in report.top_topics],
        )  # fmt: skip

"""Voice-of-the-customer endpoints: the post-chat survey (customer key) and, for staff (operator or admin
keys), trend alerts, knowledge gaps, the content audit, the review queue and the KPI report."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BeforeValidator

from assistant.api.deps import AdminKey, CustomerKey, ServicesDep, require_role
from assistant.api.errors import ConflictError, ErrorOut, NotFoundError, UnprocessableError
from assistant.api.voc_schemas import (
    AlertOut,
    AuditOut,
    CollectedOut,
    DraftCreate,
    GapOut,
    LinkCreate,
    ReportOut,
    ReviewOut,
    SurveyCreate,
    SurveyOut,
)
from assistant.keys import KeyInfo
from assistant.transcripts import ConversationNotFoundError, find_conversation
from assistant.voc.alerts import list_alerts, run_trend_check
from assistant.voc.audit import AuditConfig, audit_content
from assistant.voc.gaps import failed_questions, find_gaps
from assistant.voc.report import Report, build_report, report_png
from assistant.voc.review import (
    STATUSES,
    AlreadyReviewedError,
    NothingToDraftError,
    ReviewItemNotFoundError,
    UnknownEntryError,
    collect_review_items,
    dismiss_item,
    draft_item,
    link_item,
    list_items,
)
from assistant.voc.surveys import (
    ConversationNotClosedError,
    SurveyAlreadyAnsweredError,
    SurveyAnswers,
    record_survey,
)

router = APIRouter(tags=["voice of the customer"])


_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_text(value: object) -> object:
    """Dates and times as ISO 8601 text only (pydantic would also read "0" as a Unix timestamp)."""
    if isinstance(value, str) and not _ISO_START.match(value):
        raise ValueError(f"{value!r} is not an ISO 8601 date or time")
    return value


StaffKey = Annotated[KeyInfo, Depends(require_role("operator", "admin"))]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 429)
}


@router.post(
    "/v1/conversations/{conversation_id}/survey", status_code=201, response_model=SurveyOut, responses=_ERRORS
)
def post_survey(
    conversation_id: uuid.UUID, body: SurveyCreate, key: CustomerKey, services: ServicesDep
) -> SurveyOut:
    """Answer the post-chat survey of a closed conversation this key opened (once)."""
    try:
        answers = SurveyAnswers(
            csat=body.csat, ces=body.ces, nps=body.nps, resolved=body.resolved,
            reasons=tuple(body.reasons), comment=body.comment,
        )  # fmt: skip
    except ValueError as exc:
        raise UnprocessableError(str(exc), code="empty_survey") from exc
    with services.database.session() as session:
        try:
            conversation = find_conversation(session, conversation_id, key)
        except ConversationNotFoundError as exc:
            raise NotFoundError(str(exc), code="conversation_not_found") from exc
        try:
            return SurveyOut.of(record_survey(session, conversation, answers))
        except ConversationNotClosedError as exc:
            raise ConflictError(str(exc), code="conversation_not_closed") from exc
        except SurveyAlreadyAnsweredError as exc:
            raise ConflictError(str(exc), code="survey_already_answered") from exc


@router.get("/v1/voc/alerts", response_model=list[AlertOut], responses=_ERRORS)
def get_alerts(
    key: StaffKey,
    services: ServicesDep,
    since: Annotated[
        datetime | None,
        Query(description="Only alerts raised at or after this time (ISO 8601 with a zone)."),
        BeforeValidator(_iso_text),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[AlertOut]:
    """Trend alerts, newest first."""
    if since is not None and since.tzinfo is None:
        raise UnprocessableError(f"since {since.isoformat()!r} needs a time zone (e.g. Z)", code="naive_time")
    with services.database.session() as session:
        return [AlertOut.of(a) for a in list_alerts(session, since, limit)]


@router.post("/v1/voc/alerts/check", response_model=list[AlertOut], responses=_ERRORS)
def check_alerts(key: AdminKey, services: ServicesDep) -> list[AlertOut]:
    """Run the trend check now (what the scheduled job does); returns the alerts it raised."""
    raised = run_trend_check(services.database, services.settings.voc, services.clock())
    return [AlertOut.of(a) for a in raised]


Days = Annotated[int, Query(ge=1, le=3650, description="How many days back to look.")]


@router.get("/v1/voc/gaps", response_model=list[GapOut], responses=_ERRORS)
def get_gaps(
    key: StaffKey, services: ServicesDep, days: Days = 7, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[GapOut]:
    """Clusters of the questions the bot failed in the last ``days``, largest first."""
    now = services.clock()
    with services.database.session() as session:
        failed = failed_questions(
            session, now - timedelta(days=days), now, services.settings.voc.low_confidence
        )
    return [GapOut.of(g) for g in find_gaps(failed, services.responder.index)[:limit]]


@router.get("/v1/voc/audit", response_model=AuditOut, responses=_ERRORS)
def get_audit(
    key: StaffKey,
    services: ServicesDep,
    unseen_days: Days | None = None,
    stale_days: Days | None = None,
) -> AuditOut:
    """FAQ entries and manuals never retrieved nor shown lately, retrieved but never shown, often
    followed by failure, or stale; near-duplicated FAQ entries."""
    voc = services.settings.voc
    config = AuditConfig(unseen_days=unseen_days or voc.unseen_days, stale_days=stale_days or voc.stale_days)
    with services.database.session() as session:
        return AuditOut.of(audit_content(session, services.responder.index, services.clock(), config))


@router.post("/v1/voc/review/collect", response_model=CollectedOut, responses=_ERRORS)
def collect_review(key: StaffKey, services: ServicesDep, days: Days = 7) -> CollectedOut:
    """Queue the questions the bot failed in the last ``days`` (each once)."""
    now = services.clock()
    with services.database.session() as session:
        low = services.settings.voc.low_confidence
        return CollectedOut(queued=collect_review_items(session, now - timedelta(days=days), now, low, now))


@router.get("/v1/voc/review", response_model=list[ReviewOut], responses=_ERRORS)
def get_review_queue(
    key: StaffKey,
    services: ServicesDep,
    status: Literal[STATUSES] | None = "pending",  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ReviewOut]:
    """The review queue, oldest first (pending items by default)."""
    with services.database.session() as session:
        return [ReviewOut.of(r) for r in list_items(session, status, limit)]


@contextmanager
def _reviewing() -> Iterator[None]:
    try:
        yield
    except ReviewItemNotFoundError as exc:
        raise NotFoundError(str(exc), code="review_item_not_found") from exc
    except AlreadyReviewedError as exc:
        raise ConflictError(str(exc), code="already_reviewed") from exc
    except UnknownEntryError as exc:
        raise UnprocessableError(str(exc), code="unknown_faq_entry") from exc
    except NothingToDraftError as exc:
        raise UnprocessableError(str(exc), code="nothing_to_draft") from exc


ItemId = Annotated[int, Path(ge=1, le=2**62)]


@router.post("/v1/voc/review/{item_id}/link", response_model=ReviewOut, responses=_ERRORS)
def link_review_item(item_id: ItemId, body: LinkCreate, key: StaffKey, services: ServicesDep) -> ReviewOut:
    """The question asks for this FAQ entry: ``madoguchi voc learn`` adds it as a variation."""
    known = {c.source_id for c in services.responder.index.chunks if c.kind == "faq"}
    with _reviewing(), services.database.session() as session:
        return ReviewOut.of(link_item(session, item_id, body.faq_id, known, key.id, services.clock()))


@router.post("/v1/voc/review/{item_id}/draft", response_model=ReviewOut, responses=_ERRORS)
def draft_review_item(item_id: ItemId, body: DraftCreate, key: StaffKey, services: ServicesDep) -> ReviewOut:
    """Draft a new FAQ entry from the question and the operator's resolution (or the answer given)."""
    with _reviewing(), services.database.session() as session:
        record = draft_item(session, item_id, body.question, body.answer, key.id, services.clock())
        return ReviewOut.of(record)


@router.post("/v1/voc/review/{item_id}/dismiss", response_model=ReviewOut, responses=_ERRORS)
def dismiss_review_item(item_id: ItemId, key: StaffKey, services: ServicesDep) -> ReviewOut:
    """Nothing to learn from this question."""
    with _reviewing(), services.database.session() as session:
        return ReviewOut.of(dismiss_item(session, item_id, key.id, services.clock()))


EndParam = Annotated[
    date | None,
    Query(description="The report's last calendar day (YYYY-MM-DD, report time zone); default today."),
    BeforeValidator(_iso_text),
]
DaysParam = Annotated[
    int, Query(ge=1, le=366, description="How many days the report covers, ending on ``end``.")
]


def _report(services: Any, end: date | None, days: int) -> Report:
    """The report of the ``days`` calendar days ending on ``end``, in the configured time zone."""
    zone_name = services.settings.voc.report_timezone
    zone = ZoneInfo(zone_name)
    last = end or services.clock().astimezone(zone).date()
    begin = datetime.combine(last - timedelta(days=days - 1), time(), zone)
    stop = datetime.combine(last + timedelta(days=1), time(), zone)
    with services.database.session() as session:
        return build_report(session, begin, stop, zone_name)


@router.get("/v1/voc/report", response_model=ReportOut, responses=_ERRORS)
def get_report(key: StaffKey, services: ServicesDep, end: EndParam = None, days: DaysParam = 14) -> ReportOut:
    """KPIs by day and by path: automation, escalation by reason, CSAT, CES, NPS, top topics."""
    return ReportOut.of(_report(services, end, days))


@router.get(
    "/v1/voc/report.png",
    responses=_ERRORS | {200: {"content": {"image/png": {}}, "description": "The report's charts."}},
    response_class=Response,
)
def get_report_png(
    key: StaffKey, services: ServicesDep, end: EndParam = None, days: DaysParam = 14
) -> Response:
    """The report's charts as a PNG (volume and automation, escalation reasons, CSAT/CES, NPS by path)."""
    png = report_png(_report(services, end, days))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

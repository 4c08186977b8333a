"""The operators' endpoints (``/v1/operator``): shift, queue, claim / transfer / release / hand back /
resolve, the hand-off packet, internal notes, and live events.

Operator keys only: a customer or admin key gets 403. The operator row of a key is created on its
first request. State conflicts (claimed by somebody else, not yours, closed, resolved) are 409s with a
stable ``code``; unknown conversations or operators are 404s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse
from sqlalchemy import select

from assistant.api.deps import OperatorKey, Services, ServicesDep
from assistant.api.errors import ConflictError, ErrorOut, NotFoundError
from assistant.api.operator_schemas import (
    ConversationStateOut,
    HandoffPacketOut,
    NoteIn,
    NoteOut,
    OperatorMessageOut,
    OperatorOut,
    QueueItemOut,
    ResolutionOut,
    ResolveIn,
    ShiftIn,
    TransferIn,
)
from assistant.api.turns import sse_event
from assistant.customers import CustomerLookup
from assistant.events import ALL, StreamTiming, watch
from assistant.handoff import Summarizer, build_packet
from assistant.models import Conversation, Operator, OperatorNote
from assistant.operators import (
    OperatorNotFoundError,
    ResolutionInput,
    WorkspaceError,
    add_note,
    claim,
    ensure_operator,
    hand_back,
    list_operators,
    owned_by,
    queue,
    release,
    resolve,
    set_shift,
    transfer,
)
from assistant.transcripts import ConversationNotFoundError, messages_after

router = APIRouter(prefix="/v1/operator", tags=["operator"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 429)
}
_STREAM = {200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}}
STREAM_BATCH = 200  # messages read per poll of a stream


@dataclass(frozen=True)
class Workspace:
    """What the operator endpoints need besides the services: summaries and the customer hook."""

    summarizer: Summarizer
    lookup: CustomerLookup


def open_workspace(services: Services) -> Workspace:
    """Start live events and build the summarizer (with the responder's chat model, if any)."""
    services.events.start(services.database)
    chat = getattr(services.responder, "chat", None)  # a test responder may have none
    return Workspace(Summarizer(chat), CustomerLookup(services.settings.operators))


def close_workspace(services: Services, workspace: Workspace) -> None:
    """Stop live events and close the lookup client."""
    workspace.lookup.close()
    services.events.stop()


def get_workspace(request: Request) -> Workspace:
    """The app's workspace (set by the lifespan)."""
    workspace: Workspace = request.app.state.workspace
    return workspace


def current_operator(key: OperatorKey, services: ServicesDep) -> Operator:
    """The calling operator's row (created on first use)."""
    with services.database.session() as session:
        return ensure_operator(session, key, services.clock(), services.settings.operators.max_concurrent)


CurrentOperator = Annotated[Operator, Depends(current_operator)]
WorkspaceDep = Annotated[Workspace, Depends(get_workspace)]


@contextmanager
def _answering() -> Iterator[None]:
    """Workspace errors as API errors."""
    try:
        yield
    except ConversationNotFoundError as exc:
        raise NotFoundError(str(exc), code="conversation_not_found") from exc
    except OperatorNotFoundError as exc:
        raise NotFoundError(str(exc), code="operator_not_found") from exc
    except WorkspaceError as exc:
        raise ConflictError(str(exc), code=exc.code) from exc


@router.get("/me", response_model=OperatorOut, responses=_ERRORS)
def me(operator: CurrentOperator) -> OperatorOut:
    """The calling operator."""
    return OperatorOut.of(operator)


@router.post("/shift", response_model=OperatorOut, responses=_ERRORS)
def shift(body: ShiftIn, operator: CurrentOperator, services: ServicesDep) -> OperatorOut:
    """Go on or off shift; operators on shift let the bot hand customers over live."""
    with services.database.session() as session:
        row = session.get_one(Operator, operator.id)
        return OperatorOut.of(set_shift(session, row, body.on_shift, services.clock()))


@router.get("/operators", response_model=list[OperatorOut], responses=_ERRORS)
def operators(_operator: CurrentOperator, services: ServicesDep) -> list[OperatorOut]:
    """Every operator (to pick a transfer target)."""
    with services.database.session() as session:
        return [OperatorOut.of(o) for o in list_operators(session)]


def _queue_items(services: Services) -> list[QueueItemOut]:
    with services.database.session() as session:
        return [
            QueueItemOut(
                **ConversationStateOut.of(c).model_dump(),
                position=i,
                member_id=c.customer.member_id if c.customer else None,
                vip=bool(c.customer and c.customer.vip),
            )
            for i, c in enumerate(queue(session), start=1)
        ]


@router.get("/queue", response_model=list[QueueItemOut], responses=_ERRORS)
def get_queue(_operator: CurrentOperator, services: ServicesDep) -> list[QueueItemOut]:
    """The conversations waiting for a person (hand-offs and messages left), VIP first, then oldest."""
    return _queue_items(services)


def _mine(services: Services, operator: Operator) -> list[ConversationStateOut]:
    with services.database.session() as session:
        return [ConversationStateOut.of(c) for c in owned_by(session, operator)]


@router.get("/conversations", response_model=list[ConversationStateOut], responses=_ERRORS)
def my_conversations(operator: CurrentOperator, services: ServicesDep) -> list[ConversationStateOut]:
    """The conversations you own and have not resolved (including ones the customer closed)."""
    return _mine(services, operator)


@router.get("/conversations/{conversation_id}", response_model=HandoffPacketOut, responses=_ERRORS)
def packet(
    conversation_id: uuid.UUID, _operator: CurrentOperator, services: ServicesDep, workspace: WorkspaceDep
) -> HandoffPacketOut:
    """The hand-off packet: transcript, customer, the bot's attempts, reasons, notes, summary."""
    with services.database.session() as session:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFoundError(f"no conversation {conversation_id}", code="conversation_not_found")
        return HandoffPacketOut.of(
            build_packet(session, conversation, workspace.summarizer, workspace.lookup)
        )


@router.post("/conversations/{conversation_id}/claim", response_model=ConversationStateOut, responses=_ERRORS)
def claim_conversation(
    conversation_id: uuid.UUID, operator: CurrentOperator, services: ServicesDep
) -> ConversationStateOut:
    """Take a waiting conversation. Of two operators (or replicas) claiming at once, one gets 409."""
    with _answering(), services.database.session() as session:
        return ConversationStateOut.of(claim(session, conversation_id, operator, services.clock()))


@router.post(
    "/conversations/{conversation_id}/transfer", response_model=ConversationStateOut, responses=_ERRORS
)
def transfer_conversation(
    conversation_id: uuid.UUID, body: TransferIn, operator: CurrentOperator, services: ServicesDep
) -> ConversationStateOut:
    """Hand a conversation you own to another operator who is on shift."""
    with _answering(), services.database.session() as session:
        moved = transfer(session, conversation_id, operator, body.operator_id, services.clock())
        return ConversationStateOut.of(moved)


@router.post(
    "/conversations/{conversation_id}/release", response_model=ConversationStateOut, responses=_ERRORS
)
def release_conversation(
    conversation_id: uuid.UUID, operator: CurrentOperator, services: ServicesDep
) -> ConversationStateOut:
    """Put a conversation you own back in the queue, where it was."""
    with _answering(), services.database.session() as session:
        return ConversationStateOut.of(release(session, conversation_id, operator, services.clock()))


@router.post(
    "/conversations/{conversation_id}/handback", response_model=ConversationStateOut, responses=_ERRORS
)
def hand_back_conversation(
    conversation_id: uuid.UUID, operator: CurrentOperator, services: ServicesDep
) -> ConversationStateOut:
    """Give a conversation you own back to the bot (it is open again)."""
    with _answering(), services.database.session() as session:
        return ConversationStateOut.of(hand_back(session, conversation_id, operator, services.clock()))


@router.post("/conversations/{conversation_id}/resolve", response_model=ResolutionOut, responses=_ERRORS)
def resolve_conversation(
    conversation_id: uuid.UUID, body: ResolveIn, operator: CurrentOperator, services: ServicesDep
) -> ResolutionOut:
    """Close a conversation you own with its outcome, tags and the answer that solved it."""
    given = ResolutionInput(
        outcome=body.outcome,
        tags=tuple(dict.fromkeys(t.strip() for t in body.tags)),
        answer_text=(body.answer_text or "").strip() or None,
        answer_source_ids=tuple(dict.fromkeys(body.answer_source_ids)),
    )
    with _answering(), services.database.session() as session:
        return ResolutionOut.of(resolve(session, conversation_id, operator, given, services.clock()))


@router.post(
    "/conversations/{conversation_id}/notes", status_code=201, response_model=NoteOut, responses=_ERRORS
)
def post_note(
    conversation_id: uuid.UUID, body: NoteIn, operator: CurrentOperator, services: ServicesDep
) -> NoteOut:
    """Add an internal note (operators only; never shown to the customer)."""
    with services.database.session() as session:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFoundError(f"no conversation {conversation_id}", code="conversation_not_found")
        return NoteOut.of(add_note(session, conversation, operator, body.text, services.clock()))


def timing_of(services: Services, seconds: float | None) -> StreamTiming:
    """The stream timing from settings; ``seconds`` (a client's wish) may shorten the lifetime."""
    s = services.settings.operators
    lifetime = min(seconds, s.stream_seconds) if seconds is not None else s.stream_seconds
    return StreamTiming(recheck=s.recheck_seconds, lifetime=lifetime, keepalive=s.keepalive_seconds)


LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=64,
        description="The id of the last event received (a message seq); other values are ignored.",
    ),
]
After = Annotated[int | None, Query(ge=0, le=10**9, description="Send messages after this seq.")]
Seconds = Annotated[float | None, Query(gt=0, le=3600, description="Close the stream after this long.")]


def resume_from(last_event_id: str | None, after: int | None) -> int:
    """The seq a stream starts after: ``Last-Event-ID`` when it is one of our ids, else ``after``."""
    if last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit():
        return min(int(last_event_id), 10**9)
    return after or 0


def stream_response(events: Any) -> EventSourceResponse:
    """An event stream that proxies must not buffer."""
    return EventSourceResponse(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _conversation_poll(services: Services, conversation_id: uuid.UUID, after: int) -> Any:
    cursor = {"seq": after, "note": 0, "state": None}

    def poll() -> tuple[list[bytes], bool]:
        chunks: list[bytes] = []
        with services.database.session() as session:
            conversation = session.get_one(Conversation, conversation_id)
            messages = messages_after(session, conversation_id, cursor["seq"], STREAM_BATCH)
            notes = session.scalars(
                select(OperatorNote)
                .where(OperatorNote.conversation_id == conversation_id, OperatorNote.id > cursor["note"])
                .order_by(OperatorNote.id)
            ).all()
            state = ConversationStateOut.of(conversation).model_dump(mode="json")
        for m in messages:
            cursor["seq"] = m.seq
            body = OperatorMessageOut.of_message(m).model_dump(mode="json")
            chunks.append(sse_event("message", body, event_id=str(m.seq)))
        for n in notes:
            cursor["note"] = n.id
            chunks.append(sse_event("note", NoteOut.of(n).model_dump(mode="json")))
        if state != cursor["state"]:
            cursor["state"] = state
            chunks.append(sse_event("state", state))
        return chunks, False

    return poll


@router.get(
    "/conversations/{conversation_id}/events",
    responses=_ERRORS | _STREAM,
)
async def conversation_events(
    conversation_id: uuid.UUID,
    _operator: CurrentOperator,
    services: ServicesDep,
    after: After = None,
    last_event_id: LastEventId = None,
    seconds: Seconds = None,
) -> EventSourceResponse:
    """Live events of one conversation: ``message`` (id = seq), ``note``, ``state``.

    Resume with ``Last-Event-ID`` (or ``after``): only later messages are sent.
    """
    with services.database.session() as session:
        if session.get(Conversation, conversation_id) is None:
            raise NotFoundError(f"no conversation {conversation_id}", code="conversation_not_found")
    poll = _conversation_poll(services, conversation_id, resume_from(last_event_id, after))
    return stream_response(watch(services.events, str(conversation_id), poll, timing_of(services, seconds)))


@router.get("/events", responses=_ERRORS | _STREAM)
async def queue_events(
    operator: CurrentOperator, services: ServicesDep, seconds: Seconds = None
) -> EventSourceResponse:
    """Live events for the desk: ``queue`` (the waiting list) and ``mine`` (your conversations), each
    sent when it changes (a customer writing in a conversation you own changes its ``last_seq``)."""
    last: dict[str, Any] = {"queue": None, "mine": None}

    def poll() -> tuple[list[bytes], bool]:
        chunks = []
        current = {
            "queue": [i.model_dump(mode="json") for i in _queue_items(services)],
            "mine": [c.model_dump(mode="json") for c in _mine(services, operator)],
        }
        for name, value in current.items():
            if value != last[name]:
                last[name] = value
                chunks.append(sse_event(name, {"items": value}))
        return chunks, False

    return stream_response(watch(services.events, ALL, poll, timing_of(services, seconds)))

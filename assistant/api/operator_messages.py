"""The operator's writing endpoints: suggested replies, send with undo, pending messages.

Only the operator who owns a conversation (``assigned_operator_id``) may ask for suggestions or send;
others get a 409 with code ``not_assigned_to_you`` (like the other workspace conflicts). A sent message
answers 202 with its pending delivery and ``deliver_at``: until then ``.../undo`` cancels it, afterwards
undo is a 409 (``undo_window_closed`` or ``already_delivered``). A send may carry an ``Idempotency-Key``:
a retry with the same key replays the first answer (nothing is scheduled twice), the same key with a
different body is a 422 (``idempotency_key_reused``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.orm import Session

from assistant.api import idempotency
from assistant.api.conversations import IdempotencyKey
from assistant.api.deps import ServicesDep
from assistant.api.errors import ApiError, ConflictError, ErrorOut, NotFoundError, UnprocessableError
from assistant.api.operators import CurrentOperator
from assistant.api.schemas import DeliveryOut, OperatorMessageCreate, SuggestionSetOut
from assistant.delivery import (
    AlreadyDeliveredError,
    DeliveryNotFoundError,
    UndoWindowClosedError,
    pending_of,
    schedule,
    undo,
)
from assistant.models import Conversation, Operator
from assistant.suggest import (
    DraftIndexError,
    NothingToSuggestError,
    Suggester,
    SuggestionSetNotFoundError,
    check_draft_index,
    find_suggestion_set,
    store_suggestions,
    suggestion_request,
)

router = APIRouter(prefix="/v1/operator/conversations", tags=["operator"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 429, 503)
}


class SuggestionsUnavailableError(ApiError):
    """The app runs without a knowledge index to draft from."""

    status_code = 503
    code = "suggestions_unavailable"


def get_suggester(request: Request, services: ServicesDep) -> Suggester:
    """The app's suggester: the responder's index and chat model (built on first use)."""
    suggester: Suggester | None = getattr(request.app.state, "suggester", None)
    # Rebuilt when the server swapped in a new index generation (assistant.reload).
    if suggester is None or suggester.index is not getattr(services.responder, "index", None):
        index = getattr(services.responder, "index", None)
        if index is None:
            raise SuggestionsUnavailableError("this server has no knowledge index to draft replies from")
        chat = getattr(services.responder, "chat", None)
        company = getattr(services.responder, "company", "our company")
        suggester = Suggester(index, chat, company=company)
        request.app.state.suggester = suggester
    return suggester


SuggesterDep = Annotated[Suggester, Depends(get_suggester)]


def _owned(session: Session, conversation_id: uuid.UUID, operator: Operator) -> Conversation:
    """The conversation, if the caller owns it and it still takes messages."""
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFoundError(f"no conversation {conversation_id}", code="conversation_not_found")
    if conversation.assigned_operator_id != operator.id:
        raise ConflictError(
            f"conversation {conversation_id} is not assigned to you; claim it first",
            code="not_assigned_to_you",
        )
    if conversation.status != "escalated":
        code = "conversation_closed" if conversation.status == "closed" else "not_waiting"
        raise ConflictError(f"conversation {conversation_id} is {conversation.status}", code=code)
    return conversation


@contextmanager
def _answering() -> Iterator[None]:
    """Library errors as API errors."""
    try:
        yield
    except (DeliveryNotFoundError, SuggestionSetNotFoundError) as exc:
        code = "delivery_not_found" if isinstance(exc, DeliveryNotFoundError) else "suggestion_set_not_found"
        raise NotFoundError(str(exc), code=code) from exc
    except AlreadyDeliveredError as exc:
        raise ConflictError(str(exc), code="already_delivered") from exc
    except UndoWindowClosedError as exc:
        raise ConflictError(str(exc), code="undo_window_closed") from exc
    except NothingToSuggestError as exc:
        raise ConflictError(str(exc), code="nothing_to_suggest") from exc
    except DraftIndexError as exc:
        raise UnprocessableError(str(exc), code="no_such_draft") from exc


@router.get("/{conversation_id}/suggestions", response_model=SuggestionSetOut, responses=_ERRORS)
def get_suggestions(
    conversation_id: uuid.UUID,
    operator: CurrentOperator,
    services: ServicesDep,
    suggester: SuggesterDep,
    refresh: Annotated[bool, Query(description="Draft again even if a set exists.")] = False,
) -> Any:
    """Up to three drafts for the customer's latest message, each from a different source, cited.

    The set for a message is drafted once and kept (``refresh=true`` drafts a new one).
    """
    with _answering(), services.database.session() as session:
        conversation = _owned(session, conversation_id, operator)
        request = suggestion_request(
            session, conversation.id, conversation.locale, services.settings.api.history_messages
        )
        if request.existing is not None and not refresh:
            return SuggestionSetOut.model_validate(request.existing, from_attributes=True)
    # Drafting may wait on a chat model: outside any transaction.
    drafts = suggester.drafts(request.history, request.message, request.locale)
    with services.database.session() as session:
        row = store_suggestions(session, request, drafts, services.clock())
        return SuggestionSetOut.model_validate(row, from_attributes=True)


@router.post("/{conversation_id}/messages", status_code=202, response_model=DeliveryOut, responses=_ERRORS)
def send_message(
    conversation_id: uuid.UUID,
    body: OperatorMessageCreate,
    request: Request,
    operator: CurrentOperator,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Send a message to the customer after the undo window (``settings.operators.undo_seconds``).

    With an ``Idempotency-Key``, a retry replays the first answer (``Idempotent-Replayed: true``).
    """
    limit = services.settings.api.max_message_chars
    if len(body.text) > limit:
        raise UnprocessableError(
            f"the message has {len(body.text)} characters; the limit is {limit}", code="message_too_long"
        )
    if body.draft_index is not None and body.suggestion_set_id is None:
        raise UnprocessableError(
            "draft_index needs the suggestion_set_id it belongs to", code="no_such_draft"
        )
    lease = timedelta(seconds=services.settings.api.idempotency_lease_seconds)
    with _answering(), services.database.session() as session:
        record_id = None  # a retry of a finished send replays it, even if the chat moved on since
        if idempotency_key is not None:
            path = f"/v1/operator/conversations/{conversation_id}/messages"
            fingerprint = idempotency.request_fingerprint("POST", path, body.model_dump(mode="json"))
            claim = idempotency.claim(
                session, operator.api_key_id, idempotency_key, fingerprint, now=services.clock(), lease=lease
            )
            if isinstance(claim, idempotency.Replay):
                return idempotency.replay_response(claim)
            # The record commits with the delivery, so Fresh and Resume both mean nothing was scheduled.
            record_id = claim.record_id
        _owned(session, conversation_id, operator)
        if body.suggestion_set_id is not None:
            chosen = find_suggestion_set(session, conversation_id, body.suggestion_set_id)
            check_draft_index(chosen, body.draft_index)
        row = schedule(
            session,
            conversation_id=conversation_id,
            operator_id=operator.id,
            text=body.text,
            now=services.clock(),
            undo_seconds=services.settings.operators.undo_seconds,
            suggestion_set_id=body.suggestion_set_id,
            draft_index=body.draft_index,
        )
        out = DeliveryOut.model_validate(row, from_attributes=True)
        if record_id is not None:
            idempotency.complete(session, record_id, 202, out.model_dump(mode="json"))
    _wake_worker(request)
    return out


@router.post("/{conversation_id}/messages/{delivery_id}/undo", response_model=DeliveryOut, responses=_ERRORS)
def undo_message(
    conversation_id: uuid.UUID,
    delivery_id: Annotated[int, Path(ge=1, le=2**62)],
    operator: CurrentOperator,
    services: ServicesDep,
) -> Any:
    """Cancel your message while its undo window is open (undoing twice is fine)."""
    with _answering(), services.database.session() as session:
        row = undo(
            session,
            conversation_id=conversation_id,
            delivery_id=delivery_id,
            operator_id=operator.id,
            now=services.clock(),
        )
        return DeliveryOut.model_validate(row, from_attributes=True)


@router.get("/{conversation_id}/pending", response_model=list[DeliveryOut], responses=_ERRORS)
def pending_messages(
    conversation_id: uuid.UUID, operator: CurrentOperator, services: ServicesDep
) -> list[DeliveryOut]:
    """Your messages in this conversation still waiting for their undo window to end."""
    with services.database.session() as session:
        if session.get(Conversation, conversation_id) is None:
            raise NotFoundError(f"no conversation {conversation_id}", code="conversation_not_found")
        rows = pending_of(session, conversation_id, operator.id)
        return [DeliveryOut.model_validate(r, from_attributes=True) for r in rows]


def _wake_worker(request: Request) -> None:
    worker = getattr(request.app.state, "delivery_worker", None)
    if worker is not None:
        worker.wake()

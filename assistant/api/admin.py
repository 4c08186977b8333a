"""Admin endpoints: issue, list and revoke API keys; record what the CRM knows about members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from assistant.api.deps import AdminKey, ServicesDep
from assistant.api.errors import ErrorOut, NotFoundError, UnprocessableError
from assistant.api.schemas import (
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyOut,
    CustomerOut,
    CustomerUpsert,
    Identifier,
    RateLimitIn,
)
from assistant.keys import KeyInfo, KeyNotFoundError, issue_key, list_keys, revoke_key
from assistant.settings import RateLimit
from assistant.transcripts import upsert_customer

router = APIRouter(prefix="/v1/admin", tags=["admin"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 413, 422, 429)
}


def _key_out(info: KeyInfo, revoked: bool) -> ApiKeyOut:
    limit = info.rate_limit
    return ApiKeyOut(
        id=info.id,
        role=info.role,
        name=info.name,
        prefix=info.prefix,
        revoked=revoked,
        rate_limit=RateLimitIn(per_minute=limit.per_minute, burst=limit.burst) if limit else None,
    )


@router.post("/api-keys", status_code=201, response_model=ApiKeyIssued, responses=_ERRORS)
def create_api_key(body: ApiKeyCreate, _admin: AdminKey, services: ServicesDep) -> ApiKeyIssued:
    """Issue a key; its secret is in this response only."""
    limit = (
        RateLimit(per_minute=body.rate_limit.per_minute, burst=body.rate_limit.burst)
        if body.rate_limit
        else None
    )
    if body.publishable and body.role != "customer":
        raise UnprocessableError("only customer keys can be publishable", code="not_publishable")
    with services.database.session() as session:
        issued = issue_key(session, body.role, body.name, rate_limit=limit, publishable=body.publishable)
    return ApiKeyIssued(**_key_out(issued.info, False).model_dump(), key=issued.secret)


@router.get("/api-keys", response_model=list[ApiKeyOut], responses=_ERRORS)
def get_api_keys(_admin: AdminKey, services: ServicesDep) -> list[ApiKeyOut]:
    """Every key, oldest first, without secrets."""
    with services.database.session() as session:
        return [_key_out(info, revoked) for info, revoked in list_keys(session)]


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyOut, responses=_ERRORS)
def revoke_api_key(key_id: int, _admin: AdminKey, services: ServicesDep) -> ApiKeyOut:
    """Revoke a key; it stops working at once (revoking twice is fine)."""
    with services.database.session() as session:
        try:
            info = revoke_key(session, key_id)
        except KeyNotFoundError as exc:
            raise NotFoundError(str(exc), code="api_key_not_found") from exc
    services.key_cache.forget(key_id)  # other replicas stop accepting it within api.key_cache_seconds
    return _key_out(info, True)


@router.put("/customers/{member_id}", response_model=CustomerOut, responses=_ERRORS)
def put_customer(
    member_id: Identifier, body: CustomerUpsert, _admin: AdminKey, services: ServicesDep
) -> CustomerOut:
    """Create or update a member's name, plan and VIP flag (VIPs reach a person sooner)."""
    with services.database.session() as session:
        customer = upsert_customer(session, member_id, name=body.name, plan=body.plan, vip=body.vip)
        return CustomerOut(
            member_id=customer.member_id, name=customer.name, plan=customer.plan, vip=customer.vip
        )

"""What routers depend on: the services built once per app, and API-key authentication by role.

A key comes in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Authentication also spends
one token of the key's rate-limit bucket. Verified keys are remembered for a few seconds
(``assistant.api.keycache``), so a turn usually authenticates without touching the database, and the
dependencies are ``async``: no worker-thread hop unless the database or Redis must be asked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from assistant.api.errors import ForbiddenRoleError, RateLimitedError, UnauthenticatedError
from assistant.api.keycache import KeyCache
from assistant.api.ratelimit import RateLimiter, TokenBucketLimiter
from assistant.db import Database
from assistant.events import EventHub
from assistant.keys import KeyInfo, find_key, hash_key
from assistant.models import KeyRole, utcnow
from assistant.settings import Settings

if TYPE_CHECKING:
    from assistant.respond import Responder


@dataclass(frozen=True)
class Services:
    """Everything the API needs, built once by the lifespan (or handed in by tests)."""

    settings: Settings
    database: Database
    responder: Responder
    limiter: RateLimiter = field(default_factory=TokenBucketLimiter)
    clock: Callable[[], datetime] = utcnow
    # For /healthz: how many chunks the loaded index holds.
    index_chunks: int | None = None
    # Live-event wake-ups (started by the lifespan; see assistant.events).
    events: EventHub = field(default_factory=EventHub)
    # Called once when the app that built these services stops (e.g. the query batcher's worker).
    closers: tuple[Callable[[], None], ...] = ()
    # Recently verified keys (``api.key_cache_seconds``; the admin API's revoke forgets a key at once).
    key_cache: KeyCache = field(default_factory=lambda: KeyCache(5.0))


async def get_services(request: Request) -> Services:
    """The app's services (set by the lifespan); async: FastAPI runs it without a thread hop."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


async def authenticate(
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> KeyInfo:
    """The live API key of the request, after spending one token of its rate limit."""
    secret = header_key or (bearer.credentials if bearer else None)
    challenge = {"WWW-Authenticate": "Bearer"}
    if not secret:
        raise UnauthenticatedError("an API key is required (Authorization: Bearer or X-API-Key)", challenge)
    key = await _verified_key(services, secret.strip())
    if key is None:
        raise UnauthenticatedError("unknown or revoked API key", challenge)
    limit = key.rate_limit or services.settings.api.rate_limits[key.role]
    if isinstance(services.limiter, TokenBucketLimiter):  # in memory: no I/O, no thread needed
        verdict = services.limiter.take(key.id, limit)
    else:  # shared buckets ask Redis: blocking I/O stays off the event loop
        verdict = await run_in_threadpool(services.limiter.take, key.id, limit)
    if not verdict.allowed:
        retry = TokenBucketLimiter.retry_after_header(verdict)
        raise RateLimitedError(f"rate limit of {limit.per_minute:g}/min exceeded", {"Retry-After": retry})
    return key


async def _verified_key(services: Services, secret: str) -> KeyInfo | None:
    key_hash = hash_key(secret)
    key = services.key_cache.get(key_hash)
    if key is None:
        key = await run_in_threadpool(_find_key, services.database, secret)
        if key is not None:
            services.key_cache.put(key_hash, key)
    return key


def _find_key(database: Database, secret: str) -> KeyInfo | None:
    with database.session() as session:
        return find_key(session, secret)


def require_role(*roles: KeyRole) -> Callable[[KeyInfo], Awaitable[KeyInfo]]:
    """A dependency admitting only keys of these roles (403 for the others)."""

    async def check(key: Annotated[KeyInfo, Depends(authenticate)]) -> KeyInfo:  # no thread hop
        if key.role not in roles:
            raise ForbiddenRoleError(
                f"{key.role} keys cannot do this; it takes a key of role {' or '.join(roles)}"
            )
        return key

    return check


CustomerKey = Annotated[KeyInfo, Depends(require_role("customer"))]
AnyKey = Annotated[KeyInfo, Depends(require_role("customer", "operator", "admin"))]
AdminKey = Annotated[KeyInfo, Depends(require_role("admin"))]
OperatorKey = Annotated[KeyInfo, Depends(require_role("operator"))]

"""API keys: issue, look up, revoke, and the first-start bootstrap.

A key reads ``mdg_<role letter>_<43 url-safe characters>`` (256 random bits). Only its SHA-256 and a
12-character display prefix are stored; a key cannot be recovered from the database. The one
exception is a publishable widget key (customer role), which is public by design (see
``ApiKey.published_key``).

Errors: ``KeyNotFoundError`` when revoking a key that does not exist.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from assistant.db import Database
from assistant.models import ApiKey, KeyRole, utcnow
from assistant.settings import RateLimit, Settings

log = logging.getLogger(__name__)

_ROLE_LETTER: dict[KeyRole, str] = {"customer": "c", "operator": "o", "admin": "a"}
PREFIX_CHARS = 12


class KeyNotFoundError(LookupError):
    """No API key has the given id."""


@dataclass(frozen=True)
class KeyInfo:
    """What a request's authentication resolved to: a live key, never its secret."""

    id: int
    role: KeyRole
    name: str
    prefix: str
    rate_limit: RateLimit | None


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key: the only time its secret is known."""

    info: KeyInfo
    secret: str


def hash_key(secret: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_secret(role: KeyRole) -> str:
    """A fresh random key for ``role``."""
    return f"mdg_{_ROLE_LETTER[role]}_{secrets.token_urlsafe(32)}"


def _info(row: ApiKey) -> KeyInfo:
    limit = None
    if row.rate_limit_per_minute is not None and row.rate_limit_burst is not None:
        limit = RateLimit(per_minute=row.rate_limit_per_minute, burst=row.rate_limit_burst)
    role: KeyRole = row.role  # type: ignore[assignment]  # CHECK constraint guarantees it
    return KeyInfo(id=row.id, role=role, name=row.name, prefix=row.prefix, rate_limit=limit)


def issue_key(
    session: Session,
    role: KeyRole,
    name: str,
    *,
    rate_limit: RateLimit | None = None,
    secret: str | None = None,
    publishable: bool = False,
) -> IssuedKey:
    """Store a new key (random unless ``secret`` is given) and return it with its secret."""
    if role not in _ROLE_LETTER:
        raise ValueError(f"unknown role {role!r}")
    if publishable and role != "customer":
        raise ValueError(f"only customer keys can be publishable, not {role!r}")
    secret = secret or generate_secret(role)
    row = ApiKey(
        role=role,
        name=name,
        prefix=secret[:PREFIX_CHARS],
        key_hash=hash_key(secret),
        published_key=secret if publishable else None,
        rate_limit_per_minute=rate_limit.per_minute if rate_limit else None,
        rate_limit_burst=rate_limit.burst if rate_limit else None,
    )
    session.add(row)
    session.flush()
    return IssuedKey(info=_info(row), secret=secret)


def find_key(session: Session, secret: str) -> KeyInfo | None:
    """The live (not revoked) key with this secret, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return _info(row)


def revoke_key(session: Session, key_id: int) -> KeyInfo:
    """Revoke a key (idempotent); it stops working at once."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise KeyNotFoundError(f"no API key with id {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return _info(row)


def list_keys(session: Session) -> list[tuple[KeyInfo, bool]]:
    """Every key, oldest first, with whether it is revoked."""
    rows = session.scalars(select(ApiKey).order_by(ApiKey.id))
    return [(_info(r), r.revoked_at is not None) for r in rows]


def published_widget_key(session: Session) -> str | None:
    """The newest live publishable widget key, for the served widget page."""
    return session.scalar(
        select(ApiKey.published_key)
        .where(ApiKey.published_key.is_not(None), ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.id.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class BootstrapResult:
    """Keys created on first start; ``admin_secret`` is None when it came from settings."""

    admin: KeyInfo | None = None
    admin_secret: str | None = None
    widget: KeyInfo | None = None


def bootstrap_keys(database: Database, settings: Settings) -> BootstrapResult:
    """On first start (no keys at all) create an admin key and, for the demo, a widget key.

    The generated admin key is logged once; it cannot be shown again. Two processes starting at once
    on PostgreSQL serialize on a table lock, so only one of them creates the keys.
    """
    with database.session() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE"))
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return BootstrapResult()
        given = settings.bootstrap_admin_key.get_secret_value() if settings.bootstrap_admin_key else None
        admin = issue_key(session, "admin", "bootstrap admin", secret=given)
        widget = None
        if settings.demo_widget_key:
            widget = issue_key(session, "customer", "demo widget", publishable=True).info
    if given is None:
        log.warning("created the first admin API key (shown only this once): %s", admin.secret)
    return BootstrapResult(admin=admin.info, admin_secret=None if given else admin.secret, widget=widget)

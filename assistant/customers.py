"""Who the customer is: the customers table, optionally refreshed from the client's CRM over HTTP.

The hook (``OperatorSettings.customer_lookup_url``, ``{member_id}`` replaced) is asked first when set;
it must answer ``{"name": ..., "plan": ..., "vip": ...}`` within the timeout. What it says is written
back to the table, so the queue's VIP priority and later look-ups use it. Any failure (timeout,
refused connection, non-200, malformed JSON) is logged and the table's row answers instead: the
hand-off never waits on, or fails because of, somebody else's server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.models import Customer
from assistant.settings import OperatorSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CustomerIdentity:
    """What an operator sees about the customer; ``source`` says where it came from."""

    member_id: str
    name: str | None
    plan: str | None
    vip: bool
    source: Literal["table", "lookup"]


class _LookupAnswer(BaseModel):
    """The CRM hook's answer (extra fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, max_length=200)
    plan: str | None = Field(default=None, max_length=64)
    vip: bool = False


class CustomerLookup:
    """The optional HTTP hook; ``fetch`` returns None (logged) on any failure."""

    def __init__(self, settings: OperatorSettings, transport: httpx.BaseTransport | None = None) -> None:
        self.url = settings.customer_lookup_url
        token = settings.customer_lookup_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._client = httpx.Client(
            timeout=settings.customer_lookup_timeout, headers=headers, transport=transport
        )

    @property
    def enabled(self) -> bool:
        """Whether a URL is configured."""
        return self.url is not None

    def fetch(self, member_id: str) -> _LookupAnswer | None:
        """The CRM's answer for ``member_id``, or None when it cannot give one in time."""
        if self.url is None:
            return None
        url = self.url.replace("{member_id}", quote(member_id, safe=""))
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return _LookupAnswer.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as exc:
            log.warning("customer lookup for %s failed, using the customers table: %s", member_id, exc)
            return None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def identify(
    session: Session, member_id: str | None, lookup: CustomerLookup | None
) -> CustomerIdentity | None:
    """The customer behind ``member_id`` (None for an anonymous visitor); the hook's answer wins."""
    if member_id is None:
        return None
    row = session.scalar(select(Customer).where(Customer.member_id == member_id))
    answer = lookup.fetch(member_id) if lookup is not None and lookup.enabled else None
    if answer is not None:
        if row is not None:
            row.name, row.plan, row.vip = answer.name, answer.plan, answer.vip
            session.flush()
        return CustomerIdentity(member_id, answer.name, answer.plan, answer.vip, "lookup")
    if row is None:
        return CustomerIdentity(member_id, None, None, False, "table")
    return CustomerIdentity(member_id, row.name, row.plan, row.vip, "table")

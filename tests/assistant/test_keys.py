"""API keys: stored hashed, looked up, revoked, bootstrapped once; roles and rate limits over HTTP."""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from assistant.api.keycache import KeyCache
from assistant.api.ratelimit import TokenBucketLimiter
from assistant.db import Database
from assistant.keys import (
    KeyInfo,
    KeyNotFoundError,
    bootstrap_keys,
    find_key,
    hash_key,
    issue_key,
    list_keys,
    published_widget_key,
    revoke_key,
)
from assistant.models import ApiKey, Message
from assistant.settings import ROLES, ApiSettings, RateLimit, Settings
from tests.assistant.seams import Api, start_api


def test_a_key_is_stored_as_its_hash_only(database: Database) -> None:
    with database.session() as session:
        issued = issue_key(session, "operator", "desk 1", rate_limit=RateLimit(per_minute=30, burst=5))
    assert re.fullmatch(r"mdg_o_[A-Za-z0-9_-]{43}", issued.secret)
    with database.session() as session:
        row = session.scalars(select(ApiKey)).one()
        stored = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
    assert issued.secret not in " ".join(stored)
    assert row.key_hash == hash_key(issued.secret) and row.prefix == issued.secret[:12]
    assert row.published_key is None
    assert issued.info.rate_limit == RateLimit(per_minute=30, burst=5)


def test_find_key_accepts_live_keys_only(database: Database) -> None:
    with database.session() as session:
        issued = issue_key(session, "customer", "widget")
    with database.session() as session:
        found = find_key(session, issued.secret)
        assert found is not None and found.role == "customer" and found.id == issued.info.id
        assert find_key(session, issued.secret + "x") is None
        assert find_key(session, "") is None
        revoke_key(session, issued.info.id)
        revoke_key(session, issued.info.id)  # idempotent
    with database.session() as session:
        assert find_key(session, issued.secret) is None
        assert list_keys(session)[0][1] is True
        with pytest.raises(KeyNotFoundError):
            revoke_key(session, 999_999)


def test_only_customer_keys_can_be_publishable(database: Database) -> None:
    with database.session() as session:
        with pytest.raises(ValueError, match="publishable"):
            issue_key(session, "operator", "x", publishable=True)
        with pytest.raises(ValueError, match="role"):
            issue_key(session, "root", "x")  # type: ignore[arg-type]
        widget = issue_key(session, "customer", "widget", publishable=True)
    with database.session() as session:
        assert published_widget_key(session) == widget.secret
        revoke_key(session, widget.info.id)
    with database.session() as session:
        assert published_widget_key(session) is None


def test_bootstrap_creates_an_admin_and_a_widget_key_once(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings()
    with caplog.at_level(logging.WARNING, logger="assistant.keys"):
        first = bootstrap_keys(database, settings)
    assert first.admin is not None and first.admin.role == "admin" and first.admin_secret
    assert first.widget is not None and first.widget.role == "customer"
    assert first.admin_secret in caplog.text  # shown once, in the log
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="assistant.keys"):
        again = bootstrap_keys(database, settings)
    assert again.admin is None and again.widget is None and caplog.text == ""
    with database.session() as session:
        assert find_key(session, first.admin_secret) is not None
        assert len(list_keys(session)) == 2


def test_bootstrap_uses_the_configured_admin_key_without_logging_it(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "configured-admin-key-0123456789"
    settings = Settings(bootstrap_admin_key=SecretStr(secret), demo_widget_key=False)
    with caplog.at_level(logging.DEBUG):
        result = bootstrap_keys(database, settings)
    assert result.admin_secret is None and result.widget is None
    assert secret not in caplog.text
    with database.session() as session:
        admin = find_key(session, secret)
        assert admin is not None and admin.role == "admin"
        assert published_widget_key(session) is None


def test_token_bucket_allows_a_burst_then_refills() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(clock=lambda: now[0])
    limit = RateLimit(per_minute=60, burst=3)  # one token a second
    assert [limiter.take(1, limit).allowed for _ in range(3)] == [True, True, True]
    denied = limiter.take(1, limit)
    assert not denied.allowed and denied.retry_after == pytest.approx(1.0)
    assert TokenBucketLimiter.retry_after_header(denied) == "1"
    assert limiter.take(2, limit).allowed  # other keys have their own bucket
    now[0] = 1.0
    assert limiter.take(1, limit).allowed
    assert not limiter.take(1, limit).allowed
    now[0] = 100.0  # refills up to the burst, not beyond
    assert [limiter.take(1, limit).allowed for _ in range(4)] == [True, True, True, False]


# --- keys and roles ------------------------------------------------------------------------------


def test_missing_invalid_and_revoked_keys_get_401(api: Api) -> None:
    cid = api.open()
    url = f"/v1/conversations/{cid}"
    missing = api.client.get(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert api.client.get(url, headers={"Authorization": "Bearer mdg_c_nope"}).status_code == 401
    assert api.client.get(url, headers={"X-API-Key": api.keys["customer"]}).status_code == 200
    issued = api.client.post(
        "/v1/admin/api-keys", json={"role": "customer", "name": "temp"}, headers=api.headers("admin")
    ).json()
    temp = api.client.post("/v1/conversations", json={}, headers={"X-API-Key": issued["key"]})
    assert temp.status_code == 201
    revoked = api.client.post(f"/v1/admin/api-keys/{issued['id']}/revoke", headers=api.headers("admin"))
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    after = api.client.post("/v1/conversations", json={}, headers={"X-API-Key": issued["key"]})
    assert after.status_code == 401 and after.json()["code"] == "unauthenticated"


def test_each_role_reaches_only_its_endpoints(api: Api) -> None:
    cid = api.open()
    assert api.say(cid, "hello", who="operator").status_code == 403
    assert api.say(cid, "hello", who="admin").status_code == 403
    forbidden = api.client.get("/v1/admin/api-keys", headers=api.headers("customer"))
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    assert api.client.get("/v1/admin/api-keys", headers=api.headers("operator")).status_code == 403
    listed = api.client.get("/v1/admin/api-keys", headers=api.headers("admin"))
    assert listed.status_code == 200 and all("key" not in k for k in listed.json())
    assert api.client.get(f"/v1/conversations/{cid}", headers=api.headers("operator")).status_code == 200


def test_a_customer_key_sees_only_its_own_conversations(api: Api) -> None:
    cid = api.open("customer")
    api.say(cid, "開通のやり方を教えて")
    for request in (
        lambda: api.client.get(f"/v1/conversations/{cid}", headers=api.headers("other")),
        lambda: api.say(cid, "hijack", who="other"),
        lambda: api.client.post(
            f"/v1/conversations/{cid}/feedback",
            json={"message_id": 2, "rating": "down"},
            headers=api.headers("other"),
        ),
        lambda: api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers("other")),
    ):
        response = request()
        assert response.status_code == 404 and response.json()["code"] == "conversation_not_found"
    assert api.count(Message, conversation_id=uuid.UUID(cid)) == 2


def test_rate_limits_apply_per_key(database_url: str, tmp_path: Path, responder: Any) -> None:
    limits = dict.fromkeys(ROLES, RateLimit(per_minute=60, burst=3))  # opening the conversation takes one
    with start_api(database_url, tmp_path, responder, api=ApiSettings(rate_limits=limits)) as api:
        cid = api.open()
        codes = [
            api.client.get(f"/v1/conversations/{cid}", headers=api.headers()).status_code for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        limited = api.client.get(f"/v1/conversations/{cid}", headers=api.headers())
        assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        assert api.client.get(f"/v1/conversations/{cid}", headers=api.headers("operator")).status_code == 200


def test_cors_lets_the_widget_call_from_another_origin(api: Api) -> None:
    preflight = api.client.options(
        "/v1/conversations",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()


def test_admin_marks_a_member_vip(api: Api) -> None:
    put = api.client.put(
        "/v1/admin/customers/M-9",
        json={"name": "佐藤", "plan": "large", "vip": True},
        headers=api.headers("admin"),
    )
    assert put.status_code == 200 and put.json()["vip"] is True
    assert (
        api.client.put("/v1/admin/customers/M-9", json={"vip": True}, headers=api.headers()).status_code
        == 403
    )
    bad = api.client.post(
        "/v1/admin/api-keys",
        json={"role": "admin", "name": "x", "publishable": True},
        headers=api.headers("admin"),
    )
    assert bad.status_code == 422


def test_key_cache_expires_forgets_and_can_be_off() -> None:
    now = [0.0]
    cache = KeyCache(5.0, clock=lambda: now[0], max_entries=2)
    a, b, c = (KeyInfo(i, "customer", f"k{i}", "mdg_c", None) for i in (1, 2, 3))
    cache.put("ha", a)
    now[0] = 4.9
    assert cache.get("ha") == a
    now[0] = 5.0
    assert cache.get("ha") is None  # expired: the database is asked again
    cache.put("ha", a)
    cache.put("ha2", a)  # the same key under a second secret hash
    cache.forget(1)
    assert cache.get("ha") is None and cache.get("ha2") is None
    cache.put("hb", b)
    cache.put("hc", c)
    cache.put("ha", a)  # over max_entries: the oldest goes
    assert cache.get("hb") is None and cache.get("hc") == c and cache.get("ha") == a
    off = KeyCache(0.0)
    off.put("ha", a)
    assert off.get("ha") is None


def test_a_key_revoked_on_another_replica_stops_within_the_cache_time(api: Api) -> None:
    issued = api.client.post(
        "/v1/admin/api-keys", json={"role": "customer", "name": "elsewhere"}, headers=api.headers("admin")
    ).json()
    headers = {"X-API-Key": issued["key"]}
    assert api.client.post("/v1/conversations", json={}, headers=headers).status_code == 201  # now cached
    api.services.key_cache.ttl = 0.3
    with api.services.database.session() as session:  # what another replica's revoke does
        revoke_key(session, issued["id"])
    assert api.client.post("/v1/conversations", json={}, headers=headers).status_code == 201  # still cached
    time.sleep(0.35)
    after = api.client.post("/v1/conversations", json={}, headers=headers)
    assert after.status_code == 401 and after.json()["code"] == "unauthenticated"

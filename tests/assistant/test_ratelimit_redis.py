"""Rate limits shared by replicas through the real Redis at 127.0.0.1:6379 (skipped when absent)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from assistant.api.ratelimit import RedisTokenBucketLimiter, TokenBucketLimiter, build_limiter
from assistant.settings import RateLimit, Settings

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    name = f"mdg-test:{uuid.uuid4().hex}"
    yield name
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)
    client.close()


def test_two_replicas_spend_from_one_bucket(prefix: str) -> None:
    first, second = (RedisTokenBucketLimiter.from_url(REDIS_URL, prefix) for _ in range(2))
    limit = RateLimit(per_minute=6, burst=5)  # one token back every 10 s: none during the test
    verdicts = [(first if i % 2 else second).take(7, limit).allowed for i in range(7)]
    assert verdicts == [True] * 5 + [False, False]
    denied = first.take(7, limit)
    assert not denied.allowed and 0 < denied.retry_after <= 10.0
    assert TokenBucketLimiter.retry_after_header(denied) in {str(s) for s in range(1, 11)}
    assert second.take(8, limit).allowed  # another key has its own bucket


def test_tokens_come_back_at_the_configured_rate(prefix: str) -> None:
    limiter = RedisTokenBucketLimiter.from_url(REDIS_URL, prefix)
    limit = RateLimit(per_minute=60_000, burst=1)  # 1,000 tokens a second
    assert limiter.take(1, limit).allowed
    # Within a millisecond or two the bucket refills; a slow machine only makes it more certain.
    time.sleep(0.01)
    assert limiter.take(1, limit).allowed


def test_an_unreachable_redis_falls_back_to_the_replica_bucket(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisTokenBucketLimiter.from_url("redis://127.0.0.1:1/0")  # nothing listens on port 1
    limit = RateLimit(per_minute=6, burst=2)
    with caplog.at_level(logging.WARNING, logger="assistant.api.ratelimit"):
        verdicts = [limiter.take(3, limit).allowed for _ in range(3)]
    assert verdicts == [True, True, False]  # still limited, by this process's own bucket
    assert "rate limit store unreachable" in caplog.text


def test_settings_choose_the_limiter() -> None:
    assert isinstance(build_limiter(Settings()), TokenBucketLimiter)
    shared = build_limiter(Settings(api={"redis_url": REDIS_URL}))
    assert isinstance(shared, RedisTokenBucketLimiter)
    with pytest.raises(ValueError, match="redis_url"):
        Settings(api={"redis_url": "http://127.0.0.1:6379"})

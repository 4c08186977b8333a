"""Per-key rate limits: a token bucket per API key, in process memory or shared through Redis.

``TokenBucketLimiter`` keeps the buckets in process memory: right for one replica. Several replicas
behind a load balancer would each keep their own and let a key through N times its limit, so with
``api.redis_url`` set every replica spends from the same bucket (``RedisTokenBucketLimiter``: one Lua
script per request, atomic, timed by the Redis server's clock so replicas' clocks do not matter).
If Redis cannot be reached the request is judged by the replica's own bucket and a warning is logged:
a rate limiter must not turn a Redis outage into refused customers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from assistant.settings import RateLimit, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go ahead, and if not, when to retry."""

    allowed: bool
    retry_after: float = 0.0


class RateLimiter(Protocol):
    """Spends one token of a key's bucket per request."""

    def take(self, key_id: int, limit: RateLimit) -> Verdict:
        """Whether the request may go ahead now."""
        ...


class TokenBucketLimiter:
    """Thread-safe token buckets keyed by API key id, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, last refill time)

    def take(self, key_id: int, limit: RateLimit) -> Verdict:
        """Spend one token of ``key_id``'s bucket if there is one."""
        rate = limit.per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_id, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return Verdict(True)
            self._buckets[key_id] = (tokens, now)
            return Verdict(False, retry_after=(1.0 - tokens) / rate)

    @staticmethod
    def retry_after_header(verdict: Verdict) -> str:
        """Whole seconds, rounded up, for the ``Retry-After`` header."""
        return str(max(1, math.ceil(verdict.retry_after)))


# KEYS[1] the bucket; ARGV burst, tokens per second. Returns {allowed (0/1), retry-after seconds}.
_TAKE_SCRIPT = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""


class RedisTokenBucketLimiter:
    """Token buckets in Redis, shared by every replica using the same ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str = "madoguchi:ratelimit") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_TAKE_SCRIPT)
        self._fallback = TokenBucketLimiter()

    @classmethod
    def from_url(cls, url: str, prefix: str = "madoguchi:ratelimit") -> RedisTokenBucketLimiter:
        """A limiter on the Redis at ``url`` (short timeouts: a request never waits long on it)."""
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, prefix)

    def take(self, key_id: int, limit: RateLimit) -> Verdict:
        """Spend one token of the shared bucket; this replica's own bucket if Redis is unreachable."""
        try:
            allowed, retry = self._script(keys=[f"{self._prefix}:{key_id}"],
                                          args=[limit.burst, limit.per_minute / 60.0])
        except redis.RedisError as exc:
            log.warning("rate limit store unreachable, judging by this replica's bucket: %s", exc)
            return self._fallback.take(key_id, limit)
        return Verdict(bool(int(allowed)), retry_after=float(retry))


def build_limiter(settings: Settings) -> RateLimiter:
    """Shared buckets when ``api.redis_url`` is set, else this process's own."""
    url = settings.api.redis_url
    return RedisTokenBucketLimiter.from_url(url) if url else TokenBucketLimiter()

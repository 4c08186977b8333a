"""Per-key rate limits: a token bucket per API key, in process memory.

Good for one replica. Several replicas behind a load balancer each keep their own buckets, so a key
gets up to N times its limit; a shared store (Redis, one ``INCR``/Lua script per request) is the fix
and belongs with the multi-replica work of the operator workspace.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from assistant.settings import RateLimit


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go ahead, and if not, when to retry."""

    allowed: bool
    retry_after: float = 0.0


class TokenBucketLimiter:
    """Thread-safe token buckets keyed by API key id."""

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

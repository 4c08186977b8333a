"""Recently verified API keys, so that most requests authenticate without a database round trip.

A verified key is remembered by the SHA-256 of its secret (never the secret) for
``api.key_cache_seconds``. Revoking through this replica's admin API forgets it at once; another
replica stops accepting it within that many seconds. Unknown and revoked keys are never cached:
each such request asks the database.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from assistant.keys import KeyInfo


class KeyCache:
    """A small, thread-safe, time-limited map from a key's hash to what it is."""

    def __init__(
        self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 4096
    ) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, KeyInfo]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> KeyInfo | None:
        """The key verified less than ``ttl`` seconds ago, or None."""
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            if self._clock() - entry[0] >= self.ttl:
                del self._entries[key_hash]
                return None
            return entry[1]

    def put(self, key_hash: str, info: KeyInfo) -> None:
        """Remember a key the database just confirmed (the oldest entry goes when full)."""
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key_hash] = (self._clock(), info)
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def forget(self, key_id: int) -> None:
        """Drop every entry of this key (it was revoked or changed)."""
        with self._lock:
            for key_hash in [h for h, (_, info) in self._entries.items() if info.id == key_id]:
                del self._entries[key_hash]

"""An on-disk embedding cache keyed by model name, role (query/document) and text hash.

Re-indexing or re-evaluating the same text never embeds it twice. SQLite keeps the cache: one file,
safe for several processes (WAL), and lookups of 100k keys take well under a second.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from index.documents import content_hash
from index.embed import Embedder

Role = Literal["query", "document"]
_BATCH = 900  # SQLite's variable limit is 999 on older builds


@dataclass
class CacheStats:
    """How many texts came from the cache and how many were embedded."""

    hits: int = 0
    misses: int = 0


class EmbeddingCache:
    """A persistent map (model, role, text) -> float32 vector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emb (model TEXT NOT NULL, key TEXT NOT NULL, vec BLOB NOT NULL,"
            " PRIMARY KEY (model, key)) WITHOUT ROWID"
        )
        self._db.commit()

    def get_many(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys``."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), _BATCH):
                part = list(keys[start : start + _BATCH])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, vec FROM emb WHERE model = ? AND key IN ({marks})", [model, *part]
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        """Store vectors (float32)."""
        rows = [(model, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO emb (model, key, vec) VALUES (?, ?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


class CachedEmbedder:
    """An ``Embedder`` that looks texts up in an ``EmbeddingCache`` before embedding the rest."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.dim = inner.dim
        self.stats = CacheStats()

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors, from the cache where present."""
        return self._embed(texts, "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Document vectors, from the cache where present."""
        return self._embed(texts, "document")

    def _embed(self, texts: Sequence[str], role: Role) -> np.ndarray:
        keys = [content_hash(role, t) for t in texts]
        found = self.cache.get_many(self.name, list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in found))
        self.stats.hits += len(texts) - sum(1 for k in keys if k not in found)
        self.stats.misses += len(missing)
        if missing:
            fn = self.inner.embed_queries if role == "query" else self.inner.embed_documents
            vecs = fn(missing)
            new = {content_hash(role, t): v for t, v in zip(missing, vecs, strict=True)}
            self.cache.put_many(self.name, new)
            found.update(new)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out

"""A serving process follows the index on disk: new generations are loaded off the request path and
swapped in without a restart.

``voc learn``, ``index build`` and a model promotion each write a new index generation and move the
index's ``CURRENT`` pointer (``index.store``). ``IndexReloader`` polls that pointer every
``api.index_reload_seconds`` in a daemon thread; when it moved it loads the generation (and, if the
manifest names another embedder than the loaded one, that embedder through
``assistant.active_model``, behind a fresh query batcher), builds a responder and swaps it into the
``LiveResponder`` the API holds. A load that fails is logged and the old index keeps serving.

``LiveResponder`` is what ``Services.responder`` holds in a server: a ``Responder`` whose every turn
reads the current responder once and finishes on it, so a turn in flight never straddles two indexes.
Batchers of replaced embedders are closed after a grace period (turns in flight may still use them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.respond import Reply, Responder, TurnInput, TurnPlan
from assistant.settings import Settings
from index.batching import in_passing_thread
from index.embed import Embedder

log = logging.getLogger(__name__)

# How long a replaced query batcher stays open for the turns that started before the swap.
RETIRE_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class LoadedIndex:
    """One loaded generation: its responder, its name and the embedder it was loaded with."""

    responder: Responder
    generation: str | None
    embedder: Embedder
    # Stops what was built for this embedder (a query batcher); None when shared or nothing to stop.
    close: Callable[[], None] | None = None


class LiveResponder(Responder):
    """A ``Responder`` that delegates each turn to the current one; ``swap`` replaces it atomically.

    It subclasses ``Responder`` so that everything typed for one accepts it, but keeps no state of its
    own: ``respond``, ``stream`` and ``plan`` read the current responder once; other attributes
    (``index``, ``chat``, ``company``...) are read from the current responder.
    """

    def __init__(self, loaded: LoadedIndex) -> None:  # noqa: D107 -- no Responder state: all delegated
        self._loaded = loaded
        self._retired: list[tuple[float, Callable[[], None]]] = []
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedIndex:
        """The generation serving new turns."""
        return self._loaded

    def swap(self, loaded: LoadedIndex) -> LoadedIndex:
        """Serve new turns from ``loaded``; returns the replaced one. Its batcher closes later."""
        with self._lock:
            old, self._loaded = self._loaded, loaded
            if old.close is not None and old.close is not loaded.close:
                self._retired.append((time.monotonic(), old.close))
        return old

    def close_retired(self, older_than: float = RETIRE_GRACE_SECONDS) -> None:
        """Close replaced batchers retired at least ``older_than`` seconds ago."""
        now = time.monotonic()
        with self._lock:
            due = [c for at, c in self._retired if now - at >= older_than]
            self._retired = [(at, c) for at, c in self._retired if now - at < older_than]
        for close in due:
            close()

    def close(self) -> None:
        """Close every batcher, the current one included (the app is stopping)."""
        self.close_retired(older_than=0.0)
        if self._loaded.close is not None:
            self._loaded.close()

    def respond(self, turn: TurnInput) -> Reply:
        """The reply of the current responder."""
        return self._loaded.responder.respond(turn)

    def stream(self, turn: TurnInput) -> Iterator[str | Reply]:
        """The current responder's stream (the whole stream stays on it)."""
        return self._loaded.responder.stream(turn)

    def plan(self, turn: TurnInput) -> TurnPlan:
        """The current responder's plan."""
        return self._loaded.responder.plan(turn)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # our own state; never delegated (avoids recursion while unpickling)
            raise AttributeError(name)
        return getattr(self._loaded.responder, name)


class IndexReloader:
    """Polls the index's ``CURRENT`` and swaps new generations into a ``LiveResponder``."""

    def __init__(
        self,
        live: LiveResponder,
        settings: Settings,
        load_embedder: Callable[[], Embedder],
        wrap: Callable[[Embedder], tuple[Embedder, Callable[[], None] | None]],
    ) -> None:
        self.live = live
        self.settings = settings
        self._load_embedder = load_embedder
        self._wrap = wrap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: str | None = None

    def start(self) -> None:
        """Poll every ``api.index_reload_seconds`` in a daemon thread (nothing when it is 0)."""
        if self.settings.api.index_reload_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="index-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for a load in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        every = self.settings.api.index_reload_seconds
        while not self._stop.wait(every):
            try:
                self.check()
            except Exception:  # a thread boundary: the old index keeps serving; logged with traceback
                log.exception("index reload failed; still serving %s", self.live.current.generation)
            self.live.close_retired()

    def check(self) -> bool:
        """Load and swap in the live generation if it is not the one serving; True when swapped."""
        from index.store import IndexNotFoundError, current_generation

        directory = self.settings.index_dir
        try:
            gen = current_generation(directory)
        except IndexNotFoundError:
            return False
        current = self.live.current
        if gen.name == current.generation:
            return False
        # Loading runs torch in a thread that ends: no torch thread pool stays behind (index.batching).
        return in_passing_thread(self._load, gen, current)

    def _load(self, gen: Path, current: LoadedIndex) -> bool:
        from index.store import generation_manifest, load_generation

        wanted = generation_manifest(gen)["embedder"]
        embedder, close = current.embedder, current.close
        if wanted != current.embedder.name:
            inner = self._load_embedder()
            if inner.name != wanted:
                self._log_once(gen.name, f"generation {gen.name} was built with {wanted}, but the "
                                         f"configured embedder is {inner.name}; keeping {current.generation}")
                return False
            embedder, close = self._wrap(inner)
        try:
            index = load_generation(gen, embedder)
            responder = Responder.from_settings(self.settings, index)
        except BaseException:
            if close is not None and close is not current.close:
                close()
            raise
        self.live.swap(LoadedIndex(responder, gen.name, embedder, close))
        self._failed = None
        log.info("now serving index generation %s (%d chunks) with %s", gen.name, len(index), embedder.name)
        return True

    def _log_once(self, generation: str, message: str) -> None:
        if self._failed != generation:
            log.error(message)
            self._failed = generation

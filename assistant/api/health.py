"""``GET /healthz``: is the service up, and can it reach its database."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from assistant.api.deps import ServicesDep
from assistant.api.schemas import HealthOut

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
    out = HealthOut(
        status="ok" if database else "degraded",
        database=database,
        index_chunks=services.index_chunks,
        llm=services.settings.llm.model,
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if database else 503)

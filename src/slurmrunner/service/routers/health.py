"""GET /healthz: for load balancers and systemd watchdogs; no authentication."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..deps import DbSession

router = APIRouter(tags=["operations"])


@router.get("/healthz", responses={503: {"description": "the database is unreachable"}})
def healthz(db: DbSession) -> JSONResponse:
    """200 {"status": "ok"} when the database answers, else 503."""
    try:
        db.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JSONResponse({"status": "unavailable", "detail": "database unreachable"}, 503)
    return JSONResponse({"status": "ok"})

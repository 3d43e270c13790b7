"""Liveness (process up) and readiness (database reachable, migrations at head)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from app.api.deps import get_resources
from app.api.json_body import StrictJsonRoute
from app.api.problems import ProblemError, problems
from app.context import Resources
from app.storage.migrate import is_at_head

router = APIRouter(tags=["health"], route_class=StrictJsonRoute)


@router.get("/healthz", operation_id="healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="The database is reachable and its schema is at the latest migration",
    responses=problems(503),
)
async def readyz(resources: Annotated[Resources, Depends(get_resources)]) -> dict[str, str]:
    if not await run_in_threadpool(is_at_head, resources.settings, resources.engine):
        raise ProblemError(503, "database schema is not at the latest migration: run `caliper db upgrade`")
    return {"status": "ready"}

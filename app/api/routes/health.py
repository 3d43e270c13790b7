"""Liveness (process up) and readiness, reported per dependency: the database (reachable, migrations at
head) and the model workers. Readiness needs the database; model workers start on first use, so their
entry reports a failed start without making the service unready (routes on logits still work)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from app.api.deps import get_resources
from app.api.json_body import StrictJsonRoute
from app.api.problems import problem_response, problems
from app.context import Resources
from app.storage.db import backend_name
from app.storage.errors import DATABASE_ERRORS, database_state
from app.storage.migrate import schema_revisions

router = APIRouter(tags=["health"], route_class=StrictJsonRoute)
READINESS_TIMEOUT_S = 3.0
log = logging.getLogger("caliper")


class DependencyCheck(BaseModel):
    status: Literal["ok", "migrations-pending", "unavailable"]
    detail: dict[str, Any] = Field(default_factory=dict, description="What was found (no secrets).")


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, DependencyCheck] = Field(description="`database` and `model_workers`.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "database": {"status": "ok", "detail": {"backend": "sqlite"}},
                        "model_workers": {"status": "ok", "detail": {"size": 2, "running": 0, "busy": 0}},
                    },
                }
            ]
        }
    }


@router.get("/healthz", operation_id="healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:  # on the event loop: nothing here blocks
    return {"status": "ok"}


def _database(resources: Resources) -> DependencyCheck:
    """Reachable and migrated? The detail names the backend only: /readyz needs no key, so it shows no
    user, host or database name (the full error goes to the log)."""
    where = {"backend": backend_name(resources.settings.database_url)}
    try:
        current, heads = schema_revisions(resources.settings, resources.engine)
    except DATABASE_ERRORS as exc:
        if database_state(exc) is None:
            raise
        log.warning("readiness: database unavailable: %s", exc)
        return DependencyCheck(status="unavailable", detail={**where, "error": type(exc.__cause__ or exc).__name__})
    if current != heads:
        revisions = {"at": sorted(current), "head": sorted(heads), "fix": "run `caliper db upgrade`"}
        return DependencyCheck(status="migrations-pending", detail={**where, **revisions})
    return DependencyCheck(status="ok", detail=where)


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Each dependency: the database (reachable, at the latest migration) and the model workers",
    description="503 (a problem with the same `checks`) while the database is down or not migrated.",
    responses=problems(503),
    response_model=Readiness,
)
async def readyz(resources: Annotated[Resources, Depends(get_resources)]) -> Readiness | JSONResponse:
    try:  # a stalled database must not stall the probe: unanswered within the limit is unavailable
        database = await asyncio.wait_for(run_in_threadpool(_database, resources), READINESS_TIMEOUT_S)
    except TimeoutError:
        database = DependencyCheck(status="unavailable", detail={"error": f"no answer within {READINESS_TIMEOUT_S} s"})
    workers = resources.workers.health()
    checks = {
        "database": database,
        "model_workers": DependencyCheck(status=workers.pop("status"), detail=workers),
    }
    if database.status != "ok":
        detail = (
            "database schema is not at the latest migration: run `caliper db upgrade`"
            if database.status == "migrations-pending"
            else "the database is unreachable"
        )
        extensions = {"checks": {name: check.model_dump() for name, check in checks.items()}}
        retry = {"Retry-After": "5"} if database.status == "unavailable" else {}  # migrating is not waiting
        return problem_response(503, detail, headers=retry, extensions=extensions)
    return Readiness(status="ready", checks=checks)

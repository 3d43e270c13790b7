"""/v1/gates: judge a candidate evaluation against a baseline; get and list stored verdicts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ResourcesDep
from app.api.json_body import StrictJsonRoute
from app.api.problems import JSON_WRITE, LISTING, READ
from app.gating.schemas import GateOut, GateRequest
from app.records import Page

router = APIRouter(prefix="/v1/gates", tags=["gates"], route_class=StrictJsonRoute)


@router.post(
    "",
    operation_id="createGate",
    status_code=201,
    response_model=GateOut,
    summary="Judge a candidate against a baseline",
    responses=JSON_WRITE,
)
def create_gate(body: GateRequest, resources: ResourcesDep) -> GateOut:
    return resources.gates.create(body)


@router.get(
    "",
    operation_id="listGates",
    response_model=Page[GateOut],
    summary="List gate verdicts, newest first",
    responses=LISTING,
)
def list_(
    resources: ResourcesDep,
    candidate: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[GateOut]:
    return resources.gates.page(limit, cursor, candidate_id=candidate)


@router.get("/{gate_id}", operation_id="getGate", response_model=GateOut, summary="One gate verdict", responses=READ)
def get(gate_id: str, resources: ResourcesDep) -> GateOut:
    return resources.gates.get(gate_id)

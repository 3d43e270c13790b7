"""/v1/gates: judge a candidate evaluation against a baseline; get and list stored verdicts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from app.api.deps import get_resources, load_or_404
from app.api.json_body import StrictJsonRoute
from app.api.problems import PROBLEM_RESPONSES, ProblemError
from app.context import Resources
from app.gating.schemas import GateOut, GateRequest
from app.gating.service import NotFoundError, evaluate_gate, gate_out
from app.storage.models import GateRecord
from app.storage.pagination import Page, page

router = APIRouter(prefix="/v1/gates", tags=["gates"], route_class=StrictJsonRoute)
ResourcesDep = Annotated[Resources, Depends(get_resources)]


@router.post(
    "",
    status_code=201,
    response_model=GateOut,
    summary="Judge a candidate against a baseline",
    responses=PROBLEM_RESPONSES,
)
def create_gate(body: GateRequest, resources: ResourcesDep) -> GateOut:
    try:
        with resources.sessions.begin() as session:
            _, out = evaluate_gate(session, body)
    except NotFoundError as exc:
        raise ProblemError(404, str(exc)) from exc
    return out


@router.get("", response_model=Page[GateOut], summary="List gate verdicts, newest first", responses=PROBLEM_RESPONSES)
def list_(
    resources: ResourcesDep,
    candidate: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[GateOut]:
    query = select(GateRecord)
    if candidate is not None:
        query = query.where(GateRecord.candidate_id == candidate)
    with resources.sessions() as session:
        rows, next_cursor = page(session, query, GateRecord, limit, cursor)
        return Page[GateOut](items=[gate_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{gate_id}", response_model=GateOut, summary="One gate verdict", responses=PROBLEM_RESPONSES)
def get(gate_id: str, resources: ResourcesDep) -> GateOut:
    return gate_out(load_or_404(resources, GateRecord, gate_id, "gate"))

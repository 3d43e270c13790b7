"""/v1/gates: judge a candidate evaluation against a baseline; get and list stored verdicts."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import JSON_WRITE
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.gating.schemas import GateOut, GateRequest

router = APIRouter(prefix="/v1/gates", tags=["gates"], route_class=StrictJsonRoute)


@router.post(
    "",
    operation_id="createGate",
    status_code=201,
    response_model=GateOut,
    summary="Judge a candidate against a baseline",
    responses={**JSON_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(),
)
async def create_gate(body: GateRequest, request: Request) -> Response:
    return await created(request, "gate", resources_of(request).gates.create, body)


add_stored_routes(
    router, lambda r: r.gates, GateOut, name="Gate", thing="gate verdict", things="gate verdicts",
    id_param="gate_id", filters={"candidate": "candidate_id"},
)  # fmt: skip

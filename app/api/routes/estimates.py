"""/v1/estimates: label-free accuracy estimates of unlabelled rows, stored and listed like evaluations."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.bodies import TensorBody
from app.api.deps import resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import TENSOR_WRITE
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.estimates.schemas import INTEGER_TENSORS, TENSORS, EstimateOut, EstimateRequest

router = APIRouter(prefix="/v1/estimates", tags=["estimates"], route_class=StrictJsonRoute)
ESTIMATE = TensorBody(EstimateRequest, TENSORS, INTEGER_TENSORS)


@router.post(
    "",
    operation_id="createEstimate",
    status_code=201,
    response_model=EstimateOut,
    summary="Estimate the accuracy of unlabelled rows (cbpe, atc, doc) and store the estimate",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(ESTIMATE.openapi()),
)
async def create_estimate(request: Request) -> Response:
    body, arrays = await ESTIMATE.read(request)
    return await created(request, "estimate", resources_of(request).estimates.create, body, arrays)


add_stored_routes(
    router, lambda r: r.estimates, EstimateOut, name="Estimate", thing="estimate", things="estimates",
    id_param="estimate_id", filters={"model": "model", "dataset": "dataset"}, delete="Delete an estimate",
    tagged=True,
)  # fmt: skip

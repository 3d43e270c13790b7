"""/v1/sdm: fit and store the SDM estimator, get, list, delete, score (sdm.md §4)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.auth import role
from app.api.bodies import NPZ, TensorBody
from app.api.deps import resources_of
from app.api.json_body import StrictJsonRoute
from app.api.npz_stream import npz_response
from app.api.problems import TENSOR_WRITE
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.sdm.schemas import (
    FIT_INTEGER_FIELDS,
    FIT_TENSORS,
    SCORE_TENSORS,
    SdmOut,
    SdmRequest,
    SdmScoreRequest,
    SdmScoresOut,
)
from app.sdm.service import npz_columns, scores_out

router = APIRouter(prefix="/v1/sdm", tags=["sdm"], route_class=StrictJsonRoute)
FIT = TensorBody(SdmRequest, FIT_TENSORS, FIT_INTEGER_FIELDS)
SCORE = TensorBody(SdmScoreRequest, SCORE_TENSORS)


@router.post(
    "",
    operation_id="createSdm",
    status_code=201,
    response_model=SdmOut,
    summary="Fit the SDM estimator on a support and a calibration set, and store it",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(FIT.openapi()),
)
async def create_sdm(request: Request) -> Response:
    body, arrays = await FIT.read(request)
    return await created(request, "sdm", resources_of(request).sdm.create, body, arrays)


@router.post(
    "/{sdm_id}/score",
    operation_id="scoreSdm",
    response_model=SdmScoresOut,
    summary="SDM outputs per row (JSON, or .npz with Accept: application/x-npz)",
    responses={**TENSOR_WRITE, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra={**SCORE.openapi(), **role("read")},  # computes, stores nothing
)
async def score(sdm_id: str, request: Request) -> Response:
    _, arrays = await SCORE.read(request)
    record, scores = await run_in_threadpool(resources_of(request).sdm.score, sdm_id, arrays)
    if NPZ in request.headers.get("accept", ""):
        return npz_response(npz_columns(scores))
    return Response(scores_out(record, scores).model_dump_json(), media_type="application/json")


add_stored_routes(
    router, lambda r: r.sdm, SdmOut, name="Sdm", plural="Sdm", thing="SDM estimator", things="SDM estimators",
    id_param="sdm_id", filters={"model": "model"}, delete="Delete an SDM estimator",
)  # fmt: skip

"""/v1/detectors: fit and store, get, list, delete, score features."""

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
from app.ood.schemas import (
    DETECTOR_TENSORS,
    SCORE_FEATURES,
    DetectorOut,
    DetectorRequest,
    DetectorScoresOut,
    ScoreRequest,
)

router = APIRouter(prefix="/v1/detectors", tags=["detectors"], route_class=StrictJsonRoute)
FIT = TensorBody(DetectorRequest, DETECTOR_TENSORS, frozenset({"labels"}))
SCORE = TensorBody(ScoreRequest, SCORE_FEATURES)


@router.post(
    "",
    operation_id="createDetector",
    status_code=201,
    response_model=DetectorOut,
    summary="Fit an OOD detector and store it",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(FIT.openapi()),
)
async def create_detector(request: Request) -> Response:
    body, arrays = await FIT.read(request)
    return await created(request, "detector", resources_of(request).detectors.create, body, arrays)


@router.post(
    "/{detector_id}/score",
    operation_id="scoreDetector",
    response_model=DetectorScoresOut,
    summary="OOD scores of features (JSON, or .npz with Accept: application/x-npz)",
    responses={**TENSOR_WRITE, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra={**SCORE.openapi(), **role("read")},  # computes, stores nothing
)
async def score(detector_id: str, request: Request) -> Response:
    body, arrays = await SCORE.read(request)
    service = resources_of(request).detectors
    rows = await run_in_threadpool(service.score_rows, detector_id, arrays, body.alpha, body.fdr, body.return_logits)
    if NPZ in request.headers.get("accept", ""):  # api.md: per-row outputs of score endpoints, as .npz too
        return npz_response(rows)
    out = DetectorScoresOut.model_validate({name: values.tolist() for name, values in rows.items()})
    return Response(out.model_dump_json(exclude_none=True), media_type="application/json")


add_stored_routes(
    router, lambda r: r.detectors, DetectorOut, name="Detector", thing="detector", things="detectors",
    id_param="detector_id", filters={"model": "model"}, delete="Delete a detector",
)  # fmt: skip

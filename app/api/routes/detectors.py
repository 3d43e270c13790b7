"""/v1/detectors: fit and store, get, list, delete, score features."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.auth import role
from app.api.bodies import NPZ, TensorBody
from app.api.deps import ResourcesDep, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.npz_stream import npz_response
from app.api.problems import DELETION, LISTING, READ, TENSOR_WRITE
from app.ood.schemas import (
    DETECTOR_TENSORS,
    SCORE_FEATURES,
    DetectorOut,
    DetectorRequest,
    DetectorScoresOut,
    ScoreRequest,
)
from app.records import Page

router = APIRouter(prefix="/v1/detectors", tags=["detectors"], route_class=StrictJsonRoute)
FIT = TensorBody(DetectorRequest, DETECTOR_TENSORS, frozenset({"labels"}))
SCORE = TensorBody(ScoreRequest, SCORE_FEATURES)


@router.post(
    "",
    operation_id="createDetector",
    status_code=201,
    response_model=DetectorOut,
    summary="Fit an OOD detector and store it",
    responses=TENSOR_WRITE,
    openapi_extra=FIT.openapi(),
)
async def create_detector(request: Request) -> Response:
    body, arrays = await FIT.read(request)
    out = await run_in_threadpool(resources_of(request).detectors.create, body, arrays)
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.get(
    "",
    operation_id="listDetectors",
    response_model=Page[DetectorOut],
    summary="List detectors, newest first",
    responses=LISTING,
)
def list_(
    resources: ResourcesDep,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[DetectorOut]:
    return resources.detectors.page(limit, cursor, model=model)


@router.get(
    "/{detector_id}", operation_id="getDetector", response_model=DetectorOut, summary="One detector", responses=READ
)
def get(detector_id: str, resources: ResourcesDep) -> DetectorOut:
    return resources.detectors.get(detector_id)


@router.delete(
    "/{detector_id}", operation_id="deleteDetector", status_code=204, summary="Delete a detector", responses=DELETION
)
def delete(detector_id: str, resources: ResourcesDep) -> Response:
    resources.detectors.delete(detector_id)
    return Response(status_code=204)


@router.post(
    "/{detector_id}/score",
    operation_id="scoreDetector",
    response_model=DetectorScoresOut,
    summary="OOD scores of features (JSON, or .npz with Accept: application/x-npz)",
    responses={**TENSOR_WRITE, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra={**SCORE.openapi(), **role("read")},  # computes, stores nothing
)
async def score(detector_id: str, request: Request) -> Response:
    _, arrays = await SCORE.read(request)
    scores, nearest = await run_in_threadpool(resources_of(request).detectors.score, detector_id, arrays)
    if NPZ in request.headers.get("accept", ""):  # api.md: per-row outputs of score endpoints, as .npz too
        return npz_response({"scores": scores, "nearest_class": nearest})
    out = DetectorScoresOut(scores=scores.astype(float).tolist(), nearest_class=nearest.astype(int).tolist())
    return Response(out.model_dump_json(), media_type="application/json")

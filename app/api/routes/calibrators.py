"""/v1/calibrators: fit and store, get, list, delete, apply (JSON or .npz) and export as ONNX."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.bodies import NPZ, read_tensor_body, tensor_request_body
from app.api.deps import get_resources, load_calibrator, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import PROBLEM_RESPONSES, ProblemError
from app.calibration import service
from app.calibration.schemas import (
    FIT_TENSORS,
    INTEGER_TENSORS,
    ApplyOut,
    ApplyRequest,
    CalibratorOut,
    CalibratorRequest,
)
from app.context import Resources
from app.storage.calibrators import delete_calibrator, list_calibrators
from app.storage.pagination import Page

router = APIRouter(prefix="/v1/calibrators", tags=["calibrators"], route_class=StrictJsonRoute)
ResourcesDep = Annotated[Resources, Depends(get_resources)]


@router.post(
    "",
    status_code=201,
    response_model=CalibratorOut,
    summary="Fit a calibrator and store it",
    responses=PROBLEM_RESPONSES,
    openapi_extra=tensor_request_body("CalibratorRequest", FIT_TENSORS),
)
async def create_calibrator(request: Request) -> Response:
    resources = resources_of(request)
    options, arrays = await read_tensor_body(request, FIT_TENSORS, INTEGER_TENSORS)
    body = CalibratorRequest.model_validate(options)
    calibrator, params, report, classes = await run_in_threadpool(service.fit, body, arrays, resources.cache)
    record = await run_in_threadpool(service.store, body, calibrator, params, report, classes, resources.sessions)
    return Response(service.calibrator_out(record).model_dump_json(), status_code=201, media_type="application/json")


@router.get(
    "", response_model=Page[CalibratorOut], summary="List calibrators, newest first", responses=PROBLEM_RESPONSES
)
def list_(
    resources: ResourcesDep,
    model: str | None = None,
    dataset: str | None = None,
    method: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[CalibratorOut]:
    with resources.sessions() as session:
        rows, next_cursor = list_calibrators(session, model, dataset, method, limit, cursor)
    return Page[CalibratorOut](items=[service.calibrator_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{calibrator_id}", response_model=CalibratorOut, summary="One calibrator", responses=PROBLEM_RESPONSES)
def get(calibrator_id: str, resources: ResourcesDep) -> CalibratorOut:
    return service.calibrator_out(load_calibrator(resources, calibrator_id))


@router.delete("/{calibrator_id}", status_code=204, summary="Delete a calibrator", responses=PROBLEM_RESPONSES)
def delete(calibrator_id: str, resources: ResourcesDep) -> Response:
    with resources.sessions.begin() as session:
        if not delete_calibrator(session, calibrator_id):
            raise ProblemError(404, f"no calibrator with id {calibrator_id!r}")
    return Response(status_code=204)


@router.post(
    "/{calibrator_id}/apply",
    response_model=ApplyOut,
    summary="Calibrated probabilities of new logits (JSON, or .npz with Accept: application/x-npz)",
    responses={**PROBLEM_RESPONSES, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra=tensor_request_body("ApplyRequest", ("logits",)),
)
async def apply(calibrator_id: str, request: Request) -> Response:
    resources = resources_of(request)
    options, arrays = await read_tensor_body(request, ("logits",), frozenset())
    ApplyRequest.model_validate(options)
    if "logits" not in arrays:
        raise ProblemError(422, "logits: required", [{"field": "logits", "message": "required"}])
    record = await run_in_threadpool(load_calibrator, resources, calibrator_id)
    probabilities = await run_in_threadpool(service.apply, record, arrays["logits"], resources.cache)
    if NPZ in request.headers.get("accept", ""):
        buffer = io.BytesIO()
        np.savez(buffer, probabilities=probabilities)
        return Response(buffer.getvalue(), media_type=NPZ)
    return Response(
        ApplyOut(probabilities=probabilities.astype(np.float64).tolist()).model_dump_json(),
        media_type="application/json",
    )


@router.get(
    "/{calibrator_id}/onnx",
    summary="The calibrator as a standalone ONNX model: input `logits` [N, C] -> output `probabilities`",
    responses={**PROBLEM_RESPONSES, 200: {"content": {"application/octet-stream": {}}}},
)
def export(
    calibrator_id: str,
    resources: ResourcesDep,
    dtype: Annotated[str, Query(pattern="^(float32|float64)$", description="Input/output dtype.")] = "float32",
) -> Response:
    record = load_calibrator(resources, calibrator_id)
    model = service.restored(record, resources.cache).apply_graph(np.dtype(dtype))
    return Response(
        model.SerializeToString(),
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="calibrator-{calibrator_id}.onnx"'},
    )

"""/v1/calibrators: fit and store, get, list, delete, apply (JSON or .npz) and export as ONNX."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.auth import role
from app.api.bodies import NPZ, TensorBody
from app.api.deps import ResourcesDep, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.npz_stream import npz_response
from app.api.problems import READ, TENSOR_WRITE, ProblemError
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.calibration.schemas import (
    FIT_TENSORS,
    INTEGER_TENSORS,
    ApplyOut,
    ApplyRequest,
    CalibratorOut,
    CalibratorRequest,
)

router = APIRouter(prefix="/v1/calibrators", tags=["calibrators"], route_class=StrictJsonRoute)
FIT = TensorBody(CalibratorRequest, FIT_TENSORS, INTEGER_TENSORS)
APPLY = TensorBody(ApplyRequest, ("logits",))


@router.post(
    "",
    operation_id="createCalibrator",
    status_code=201,
    response_model=CalibratorOut,
    summary="Fit a calibrator and store it",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(FIT.openapi()),
)
async def create_calibrator(request: Request) -> Response:
    body, arrays = await FIT.read(request)
    return await created(request, "calibrator", resources_of(request).calibrators.create, body, arrays)


@router.post(
    "/{calibrator_id}/apply",
    operation_id="applyCalibrator",
    response_model=ApplyOut,
    summary="Calibrated probabilities of new logits (JSON, or .npz with Accept: application/x-npz)",
    responses={**TENSOR_WRITE, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra={**APPLY.openapi(), **role("read")},  # computes, stores nothing
)
async def apply(calibrator_id: str, request: Request) -> Response:
    _, arrays = await APPLY.read(request)
    if "logits" not in arrays:
        raise ProblemError(422, "logits: required", [{"field": "logits", "message": "required"}])
    probabilities = await run_in_threadpool(resources_of(request).calibrators.apply, calibrator_id, arrays["logits"])
    if NPZ in request.headers.get("accept", ""):
        return npz_response({"probabilities": probabilities})
    return Response(
        ApplyOut(probabilities=probabilities.astype(np.float64).tolist()).model_dump_json(),
        media_type="application/json",
    )


@router.get(
    "/{calibrator_id}/onnx",
    operation_id="exportCalibrator",
    summary="The calibrator as a standalone ONNX model: input `logits` [N, C] -> output `probabilities`",
    responses={**READ, 200: {"content": {"application/octet-stream": {}}}},
    response_class=Response,
)
def export(
    calibrator_id: str,
    resources: ResourcesDep,
    dtype: Annotated[str, Query(pattern="^(float32|float64)$", description="Input/output dtype.")] = "float32",
) -> Response:
    return Response(
        resources.calibrators.onnx(calibrator_id, np.dtype(dtype)),
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="calibrator-{calibrator_id}.onnx"'},
    )


add_stored_routes(
    router, lambda r: r.calibrators, CalibratorOut, name="Calibrator", thing="calibrator", things="calibrators",
    id_param="calibrator_id", filters={"model": "model", "dataset": "dataset", "method": "method"},
    delete="Delete a calibrator",
)  # fmt: skip

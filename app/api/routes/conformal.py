"""/v1/conformal: fit and store split conformal predictors, get, list, delete, predict sets (JSON or
.npz) and export as ONNX."""

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
from app.api.problems import READ, TENSOR_WRITE
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.conformal.schemas import (
    FIT_TENSORS,
    INTEGER_TENSORS,
    PREDICT_TENSORS,
    ConformalOut,
    ConformalPredictOut,
    ConformalPredictRequest,
    ConformalRequest,
)

router = APIRouter(prefix="/v1/conformal", tags=["conformal"], route_class=StrictJsonRoute)
FIT = TensorBody(ConformalRequest, FIT_TENSORS, INTEGER_TENSORS)
PREDICT = TensorBody(ConformalPredictRequest, PREDICT_TENSORS, INTEGER_TENSORS)


@router.post(
    "",
    operation_id="createConformal",
    status_code=201,
    response_model=ConformalOut,
    summary="Fit a split conformal predictor on calibration rows and store it",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(FIT.openapi()),
)
async def create_conformal(request: Request) -> Response:
    body, arrays = await FIT.read(request)
    return await created(request, "conformal", resources_of(request).conformal.create, body, arrays)


@router.post(
    "/{conformal_id}/predict",
    operation_id="predictConformal",
    response_model=ConformalPredictOut,
    summary="Prediction sets of new rows, with their coverage when labels are given (JSON, or .npz with "
    "Accept: application/x-npz: prediction_set [N, C] bool and set_size)",
    responses={**TENSOR_WRITE, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra={**PREDICT.openapi(), **role("read")},  # computes, stores nothing
)
async def predict(conformal_id: str, request: Request) -> Response:
    _, arrays = await PREDICT.read(request)
    service = resources_of(request).conformal
    if NPZ in request.headers.get("accept", ""):
        sets, sizes, _ = await run_in_threadpool(service.predict, conformal_id, arrays)
        return npz_response({"prediction_set": sets, "set_size": sizes})
    out = await run_in_threadpool(service.predict_out, conformal_id, arrays)
    return Response(out.model_dump_json(), media_type="application/json")


@router.get(
    "/{conformal_id}/onnx",
    operation_id="exportConformal",
    summary="The predictor as a standalone ONNX model: input `logits` [N, C] -> `prediction_set` [N, C] bool, "
    "`set_size` [N] int64 (the predictor's calibrator inside, else the softmax)",
    responses={**READ, 200: {"content": {"application/octet-stream": {}}}},
    response_class=Response,
)
def export(
    conformal_id: str,
    resources: ResourcesDep,
    dtype: Annotated[str, Query(pattern="^(float32|float64)$", description="Input dtype.")] = "float32",
) -> Response:
    return Response(
        resources.conformal.onnx(conformal_id, np.dtype(dtype)),
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="conformal-{conformal_id}.onnx"'},
    )


add_stored_routes(
    router, lambda r: r.conformal, ConformalOut, name="Conformal", plural="Conformal", thing="conformal predictor",
    things="conformal predictors", id_param="conformal_id",
    filters={"model": "model", "dataset": "dataset", "method": "method"}, delete="Delete a conformal predictor",
    tagged=True,
)  # fmt: skip

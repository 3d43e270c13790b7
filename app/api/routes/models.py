"""/v1/models: upload (streamed to the artifact store), get, list, delete, the bytes back, predict."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.api.auth import role
from app.api.bodies import NPZ, TensorBody
from app.api.deps import ResourcesDep, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.npz_stream import npz_response
from app.api.problems import READ, TENSOR_WRITE, problems
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.api.uploads import read_model_upload
from app.evaluation.schemas import (
    INTEGER_FIELDS,
    MODEL_TENSOR_FIELDS,
    SLICE_PARTS,
    EvaluationOut,
    ModelEvaluationRequest,
)
from app.models.schemas import ModelOut, ModelRequest, PredictRequest
from app.pipelines.heads import Heads

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=StrictJsonRoute)
EVALUATION = TensorBody(ModelEvaluationRequest, MODEL_TENSOR_FIELDS, INTEGER_FIELDS, SLICE_PARTS)
PREDICT = TensorBody(PredictRequest, ("inputs.*",))
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The .onnx bytes."},
                        "request": {"$ref": "#/components/schemas/ModelRequest"},
                    },
                },
                "encoding": {"request": {"contentType": "application/json"}},
            }
        },
    }
}


@router.post(
    "",
    operation_id="uploadModel",
    status_code=201,
    response_model=ModelOut,
    summary="Upload an ONNX classifier (multipart: `file` and `request`)",
    responses=problems(400, 413, 415, 422, 503),
    openapi_extra=UPLOAD_BODY,
)
async def create_model(request: Request) -> Response:
    resources = resources_of(request)
    options, upload = await read_model_upload(request, resources.artifacts, resources.settings.max_json_bytes)
    with upload:
        body = ModelRequest.model_validate(options)
        answer = await run_in_threadpool(resources.models.create, body, upload)
    return Response(answer.model_dump_json(), status_code=201, media_type="application/json")


@router.get(
    "/{model_id}/onnx",
    operation_id="getModelOnnx",
    summary="The uploaded bytes",
    responses={**READ, 200: {"content": {"application/octet-stream": {}}}},
    response_class=FileResponse,
)
def onnx_file(model_id: str, resources: ResourcesDep) -> FileResponse:
    filename, path = resources.models.file(model_id)
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.get(
    "/{model_id}/export",
    operation_id="exportModel",
    summary="The model with its heads merged into one self-contained ONNX model",
    description="Inputs: the model's. Outputs: the model's, plus `probabilities` (calibrated with `calibrator_id`, "
    "else the softmax), `ood_score` (with `detector_id`; and `ood_p_value` when the detector has a calibration set), "
    "`prediction_set` [N, C] BOOL and `set_size` [N] INT64 (with `conformal_id`), and with `sdm_id` "
    "`sdm_probabilities`, `sdm_q` (raw q), `sdm_d` and `high_reliability`. An output name the model already has gets "
    "the prefix `caliper_` (that one only). `dtype` (default the logits output's) is the precision of the calibrator "
    "and the detector; the SDM estimator runs in its fitted precision. Run in onnxruntime it gives what `/predict` "
    "gives. A binary model's `probabilities` are [N] P(class 1); its heads see the two-class problem [0, z] "
    "(`sdm_probabilities` [N, 2]).",
    responses={**READ, 200: {"content": {"application/octet-stream": {}}}},
    response_class=Response,
)
def export(
    model_id: str,
    resources: ResourcesDep,
    calibrator_id: str | None = None,
    detector_id: str | None = None,
    sdm_id: str | None = None,
    conformal_id: str | None = None,
    dtype: Literal["float32", "float64"] | None = None,
) -> Response:
    heads = Heads(calibrator_id, detector_id, sdm_id, conformal_id)
    export = resources.exports.export(model_id, heads, np.dtype(dtype) if dtype else None)
    disposition = f'attachment; filename="{export.model_name}-caliper.onnx"'
    return Response(
        export.data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": disposition},
    )


@router.post(
    "/{model_id}/evaluations",
    operation_id="evaluateModel",
    status_code=201,
    response_model=EvaluationOut,
    summary="Evaluate the model on inputs (run chunk by chunk into the evaluation state) and store it",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(EVALUATION.openapi()),
)
async def create_model_evaluation(model_id: str, request: Request) -> Response:
    body, arrays = await EVALUATION.read(request)
    evaluate = resources_of(request).evaluations.create_from_model
    return await created(request, "model_evaluation", evaluate, model_id, body, arrays)


@router.post(
    "/{model_id}/predict",
    operation_id="predict",
    summary="Run the model on inputs, with optional calibrator, detector and SDM heads",
    description="Columns per row: `logits`, `probabilities` (calibrated with `calibrator_id`, else the softmax), "
    "`prediction`, `confidence`, and `embedding`, `ood_score`, `prediction_set` and `sdm` when asked. A binary model "
    "(api.md) answers `logits` as [N] log-odds and `probabilities` as [N] P(class 1), as a calibrator's `apply` does "
    "on binary logits; its heads see the two-class problem [0, z].",
    responses={**TENSOR_WRITE, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra={**PREDICT.openapi(), **role("read")},  # stores nothing
)
async def predict(model_id: str, request: Request) -> Response:
    body, arrays = await PREDICT.read(request)
    inputs = {k.removeprefix("inputs."): v for k, v in arrays.items()}
    heads = Heads(body.calibrator_id, body.detector_id, body.sdm_id, body.conformal_id)
    predictions = resources_of(request).predictions
    columns = await run_in_threadpool(predictions.predict, model_id, inputs, heads, body.return_embedding)
    if NPZ in request.headers.get("accept", ""):
        return npz_response(columns)
    return Response(predict_json(columns), media_type="application/json")


def predict_json(columns: dict[str, np.ndarray]) -> str:
    """api.md's columns, `sdm.*` nested under `sdm` (non-finite values as null)."""

    def listed(value: np.ndarray) -> object:
        values: list[object] = value.tolist()
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return _nulled(values)
        return values

    out: dict[str, object] = {k: listed(v) for k, v in columns.items() if not k.startswith("sdm.")}
    sdm = {k.removeprefix("sdm."): listed(v) for k, v in columns.items() if k.startswith("sdm.")}
    if sdm:
        out["sdm"] = sdm
    return json.dumps(out)


def _nulled(values: object) -> object:
    """Nested lists with inf/NaN replaced by None (JSON has neither)."""
    if isinstance(values, list):
        return [_nulled(v) for v in values]
    return (
        values if isinstance(values, float) and np.isfinite(values) else (None if isinstance(values, float) else values)
    )


add_stored_routes(
    router, lambda r: r.models, ModelOut, name="Model", thing="model", things="models", id_param="model_id",
    filters={"name": "name"}, delete="Delete a model (409 while a pipeline deploys it)",
    delete_responses=problems(404, 409, 503),
)  # fmt: skip

"""/v1/ood: logit-based scores and the separation of in- and out-of-distribution scores."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.auth import role
from app.api.bodies import read_tensor_body, tensor_request_body
from app.api.deps import resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import TENSOR_WRITE
from app.ood.schemas import (
    EVALUATE_TENSORS,
    SCORE_TENSORS,
    OodEvaluateOut,
    OodEvaluateRequest,
    ScoresOut,
    ScoresRequest,
)

router = APIRouter(prefix="/v1/ood", tags=["ood"], route_class=StrictJsonRoute)


@router.post(
    "/scores",
    operation_id="scoreLogits",
    response_model=ScoresOut,
    summary="Logit-based OOD scores (higher = more OOD)",
    responses=TENSOR_WRITE,
    openapi_extra={**tensor_request_body("ScoresRequest", SCORE_TENSORS), **role("read")},  # computes, stores nothing
)
async def scores(request: Request) -> Response:
    options, arrays = await read_tensor_body(request, SCORE_TENSORS, frozenset())
    body = ScoresRequest.model_validate(options)
    out = await run_in_threadpool(resources_of(request).ood.logit_scores, body, arrays)
    return Response(out.model_dump_json(), media_type="application/json")


@router.post(
    "/evaluate",
    operation_id="evaluateOod",
    response_model=OodEvaluateOut,
    summary="AUROC, AUPR-In/Out, FPR@95 (both conventions), detection error",
    responses=TENSOR_WRITE,
    openapi_extra={
        **tensor_request_body("OodEvaluateRequest", EVALUATE_TENSORS),
        **role("read"),
    },  # computes, stores nothing
)
async def evaluate(request: Request) -> Response:
    options, arrays = await read_tensor_body(request, EVALUATE_TENSORS, frozenset())
    body = OodEvaluateRequest.model_validate(options)
    out = await run_in_threadpool(resources_of(request).ood.evaluate, body, arrays)
    return Response(out.model_dump_json(), media_type="application/json")

"""/v1/ood: logit-based scores and the separation of in- and out-of-distribution scores."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.auth import role
from app.api.bodies import TensorBody
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
SCORES = TensorBody(ScoresRequest, SCORE_TENSORS)
EVALUATE = TensorBody(OodEvaluateRequest, EVALUATE_TENSORS)


@router.post(
    "/scores",
    operation_id="scoreLogits",
    response_model=ScoresOut,
    summary="Logit-based OOD scores (higher = more OOD)",
    responses=TENSOR_WRITE,
    openapi_extra={**SCORES.openapi(), **role("read")},  # computes, stores nothing
)
async def scores(request: Request) -> Response:
    body, arrays = await SCORES.read(request)
    out = await run_in_threadpool(resources_of(request).ood.logit_scores, body, arrays)
    return Response(out.model_dump_json(), media_type="application/json")


@router.post(
    "/evaluate",
    operation_id="evaluateOod",
    response_model=OodEvaluateOut,
    summary="AUROC, AUPR-In/Out, FPR@95 (both conventions), detection error",
    responses=TENSOR_WRITE,
    openapi_extra={**EVALUATE.openapi(), **role("read")},  # computes, stores nothing
)
async def evaluate(request: Request) -> Response:
    body, arrays = await EVALUATE.read(request)
    out = await run_in_threadpool(resources_of(request).ood.evaluate, body, arrays)
    return Response(out.model_dump_json(), media_type="application/json")

"""/v1/sdm: fit and store the SDM estimator, get, list, delete, score (sdm.md §4)."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.api.bodies import NPZ, read_tensor_body, tensor_request_body
from app.api.deps import get_resources, load_sdm, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import PROBLEM_RESPONSES, ProblemError
from app.context import Resources
from app.core.sdm import Scores
from app.sdm import service
from app.sdm.schemas import (
    FIT_INTEGER_FIELDS,
    FIT_TENSORS,
    SCORE_TENSORS,
    SdmOut,
    SdmRequest,
    SdmScoreRequest,
    SdmScoresOut,
)
from app.storage.models import SdmRecord
from app.storage.pagination import Page, page

router = APIRouter(prefix="/v1/sdm", tags=["sdm"], route_class=StrictJsonRoute)
ResourcesDep = Annotated[Resources, Depends(get_resources)]


@router.post(
    "",
    status_code=201,
    response_model=SdmOut,
    summary="Fit the SDM estimator on a support and a calibration set, and store it",
    responses=PROBLEM_RESPONSES,
    openapi_extra=tensor_request_body("SdmRequest", FIT_TENSORS),
)
async def create_sdm(request: Request) -> Response:
    resources = resources_of(request)
    options, arrays = await read_tensor_body(request, FIT_TENSORS, FIT_INTEGER_FIELDS)
    body = SdmRequest.model_validate(options)
    estimator, support_statistics = await run_in_threadpool(service.fit, body, arrays, resources.cache)
    n_calibration = len(arrays["calibration.labels"])
    record = await run_in_threadpool(service.store, body, estimator, n_calibration, resources.sessions)
    out = service.sdm_out(record, support_statistics)
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.get("", response_model=Page[SdmOut], summary="List SDM estimators, newest first", responses=PROBLEM_RESPONSES)
def list_(
    resources: ResourcesDep,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[SdmOut]:
    query = select(SdmRecord)
    if model is not None:
        query = query.where(SdmRecord.model == model)
    with resources.sessions() as session:
        rows, next_cursor = page(session, query, SdmRecord, limit, cursor)
        return Page[SdmOut](items=[service.sdm_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{sdm_id}", response_model=SdmOut, summary="One SDM estimator", responses=PROBLEM_RESPONSES)
def get(sdm_id: str, resources: ResourcesDep) -> SdmOut:
    return service.sdm_out(load_sdm(resources, sdm_id))


@router.delete("/{sdm_id}", status_code=204, summary="Delete an SDM estimator", responses=PROBLEM_RESPONSES)
def delete(sdm_id: str, resources: ResourcesDep) -> Response:
    with resources.sessions.begin() as session:
        deleted = session.execute(sql_delete(SdmRecord).where(SdmRecord.id == sdm_id)).rowcount  # type: ignore[attr-defined]
    resources.estimators.evict(sdm_id)
    if not deleted:
        raise ProblemError(404, f"no SDM estimator with id {sdm_id!r}")
    return Response(status_code=204)


def scored(resources: Resources, sdm_id: str, arrays: dict[str, np.ndarray]) -> tuple[SdmRecord, Scores]:
    record = load_sdm(resources, sdm_id)
    return record, service.score_stored(record, arrays, resources.sessions, resources.estimators, resources.cache)


@router.post(
    "/{sdm_id}/score",
    response_model=SdmScoresOut,
    summary="SDM outputs per row (JSON, or .npz with Accept: application/x-npz)",
    responses={**PROBLEM_RESPONSES, 200: {"content": {"application/json": {}, NPZ: {}}}},
    openapi_extra=tensor_request_body("SdmScoreRequest", SCORE_TENSORS),
)
async def score(sdm_id: str, request: Request) -> Response:
    resources = resources_of(request)
    options, arrays = await read_tensor_body(request, SCORE_TENSORS, frozenset())
    SdmScoreRequest.model_validate(options)
    record, scores = await run_in_threadpool(scored, resources, sdm_id, arrays)
    if NPZ in request.headers.get("accept", ""):
        buffer = io.BytesIO()
        np.savez(buffer, **service.npz_columns(scores))  # type: ignore[arg-type]
        return Response(buffer.getvalue(), media_type=NPZ)
    return Response(service.scores_out(record, scores).model_dump_json(), media_type="application/json")

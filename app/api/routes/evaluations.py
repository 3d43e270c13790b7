"""/v1/evaluations: create (JSON or multipart), get, list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from app.api.bodies import read_tensor_body, tensor_request_body
from app.api.deps import get_resources, load_calibrator, load_sdm, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import PROBLEM_RESPONSES, ProblemError
from app.calibration.service import calibrated_inputs
from app.context import Resources
from app.core.errors import InputError
from app.evaluation.schemas import INTEGER_FIELDS, TENSOR_FIELDS, EvaluationOut, EvaluationRequest
from app.evaluation.service import compute, evaluation_out, finite_or_none, store, stored_evaluation_out
from app.gating.service import NotFoundError, add_tags
from app.sdm.service import evaluation_metrics, score_stored
from app.storage.evaluations import (
    EvaluationFilter,
    delete_evaluation,
    get_evaluation,
    list_evaluations,
    load_arrays,
)
from app.storage.pagination import Page
from app.tags import Tags

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], route_class=StrictJsonRoute)
INLINE_COMPUTE_BYTES = 64 * 1024  # requests this small are computed on the event loop
ResourcesDep = Annotated[Resources, Depends(get_resources)]


@router.post(
    "",
    status_code=201,
    response_model=EvaluationOut,
    response_model_exclude_none=False,
    summary="Compute losses and metrics of predictions, and store them",
    responses=PROBLEM_RESPONSES,
    openapi_extra=tensor_request_body("EvaluationRequest", TENSOR_FIELDS),
)
async def create_evaluation(request: Request) -> Response:
    resources = resources_of(request)  # no Depends on the hot path: dependency solving costs ~0.2 ms
    options, arrays = await read_tensor_body(request, TENSOR_FIELDS, INTEGER_FIELDS)
    body = EvaluationRequest.model_validate(options)
    embeddings = arrays.pop("embeddings", None)
    if (embeddings is None) != (body.sdm_id is None):
        raise InputError("embeddings" if embeddings is None else "sdm_id", "give `sdm_id` and `embeddings` together")
    sdm_inputs = {k: v for k, v in (("embeddings", embeddings), ("logits", arrays.get("logits"))) if v is not None}
    if body.calibrator_id is not None:
        record = await run_in_threadpool(load_calibrator, resources, body.calibrator_id)
        arrays = await run_in_threadpool(calibrated_inputs, record, arrays, resources.cache)
    args = (body, arrays, resources.cache)
    if sum(a.nbytes for a in arrays.values()) <= INLINE_COMPUTE_BYTES:
        computed = compute(*args)  # sub-millisecond: a thread hop would cost more than the work
    else:
        computed = await run_in_threadpool(compute, *args)
    if body.sdm_id is not None:
        if "logits" not in sdm_inputs or computed.batch.labels is None:
            raise InputError("sdm_id", "SDM metrics need `logits` (the SDM activation uses them) and integer `labels`")
        sdm = await run_in_threadpool(load_sdm, resources, body.sdm_id)
        scores = await run_in_threadpool(
            score_stored, sdm, sdm_inputs, resources.sessions, resources.estimators, resources.cache
        )
        computed.metrics.update(finite_or_none(evaluation_metrics(scores, computed.batch.labels)))
    record_id = await run_in_threadpool(store, computed, resources.sessions) if body.store else None
    # Serialized once by the model itself (the declared response_model documents it).
    return Response(
        evaluation_out(computed, record_id).model_dump_json(), status_code=201, media_type="application/json"
    )


@router.get(
    "", response_model=Page[EvaluationOut], summary="List evaluations, newest first", responses=PROBLEM_RESPONSES
)
def list_(
    resources: ResourcesDep,
    model: str | None = None,
    dataset: str | None = None,
    tag: Annotated[list[str] | None, Query(description="key:value; repeat to require several tags.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[EvaluationOut]:
    tags = []
    for item in tag or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ProblemError(
                422, f"tag {item!r} must be key:value", [{"field": "tag", "message": "expected key:value"}]
            )
        tags.append((key, value))
    with resources.sessions() as session:
        rows, next_cursor = list_evaluations(session, EvaluationFilter(model, dataset, tuple(tags)), limit, cursor)
        return Page[EvaluationOut](items=[stored_evaluation_out(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{evaluation_id}", response_model=EvaluationOut, summary="One stored evaluation", responses=PROBLEM_RESPONSES
)
def get(
    evaluation_id: str,
    resources: ResourcesDep,
    per_sample: Annotated[bool, Query(description="Include the stored per-row loss values.")] = False,
) -> EvaluationOut:
    with resources.sessions() as session:
        record = get_evaluation(session, evaluation_id)
        if record is None:
            raise ProblemError(404, f"no evaluation with id {evaluation_id!r}")
        rows = None
        if per_sample:
            rows = {
                k.removeprefix("loss."): v
                for k, v in load_arrays(session, evaluation_id).items()
                if k.startswith("loss.")
            }
        return stored_evaluation_out(record, rows)


class TagsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: Tags


@router.post(
    "/{evaluation_id}/tags",
    response_model=EvaluationOut,
    summary="Set tags (e.g. promote to prod)",
    responses=PROBLEM_RESPONSES,
)
def set_tags(evaluation_id: str, body: TagsBody, resources: ResourcesDep) -> EvaluationOut:
    """`caliper promote EVAL_ID --tag prod` sets tag `prod` (value `true`); a gate's baseline selector
    `{"tag": "prod"}` then picks the newest such evaluation."""
    try:
        with resources.sessions.begin() as session:
            return stored_evaluation_out(add_tags(session, evaluation_id, body.tags))
    except NotFoundError as exc:
        raise ProblemError(404, str(exc)) from exc


@router.delete(
    "/{evaluation_id}", status_code=204, summary="Delete an evaluation and its arrays", responses=PROBLEM_RESPONSES
)
def delete(evaluation_id: str, resources: ResourcesDep) -> Response:
    with resources.sessions.begin() as session:
        if not delete_evaluation(session, evaluation_id):
            raise ProblemError(404, f"no evaluation with id {evaluation_id!r}")
    return Response(status_code=204)

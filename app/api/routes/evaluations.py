"""/v1/evaluations: create (JSON or multipart), get, list, tag, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from app.api.bodies import read_tensor_body, tensor_request_body
from app.api.deps import INLINE_BYTES, get_resources, off_loop, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import PROBLEM_RESPONSES, ProblemError
from app.context import Resources
from app.evaluation.schemas import INTEGER_FIELDS, TENSOR_FIELDS, EvaluationOut, EvaluationRequest
from app.records import Tags
from app.storage.evaluations import EvaluationFilter
from app.storage.pagination import Page

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], route_class=StrictJsonRoute)
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
    touches_storage = body.store or body.calibrator_id is not None or body.sdm_id is not None
    inline = not touches_storage and sum(a.nbytes for a in arrays.values()) <= INLINE_BYTES
    out = await off_loop(inline, resources.evaluations.create, body, arrays)
    # Serialized once by the model itself (the declared response_model documents it).
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


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
    tags: list[tuple[str, str | None]] = []
    for item in tag or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ProblemError(
                422, f"tag {item!r} must be key:value", [{"field": "tag", "message": "expected key:value"}]
            )
        tags.append((key, value))
    items, next_cursor = resources.evaluations.page(EvaluationFilter(model, dataset, tuple(tags)), limit, cursor)
    return Page[EvaluationOut](items=items, next_cursor=next_cursor)


@router.get(
    "/{evaluation_id}", response_model=EvaluationOut, summary="One stored evaluation", responses=PROBLEM_RESPONSES
)
def get(
    evaluation_id: str,
    resources: ResourcesDep,
    per_sample: Annotated[bool, Query(description="Include the stored per-row loss values.")] = False,
) -> EvaluationOut:
    return resources.evaluations.get(evaluation_id, per_sample)


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
    return resources.evaluations.set_tags(evaluation_id, body.tags)


@router.delete(
    "/{evaluation_id}", status_code=204, summary="Delete an evaluation and its arrays", responses=PROBLEM_RESPONSES
)
def delete(evaluation_id: str, resources: ResourcesDep) -> Response:
    resources.evaluations.delete(evaluation_id)
    return Response(status_code=204)

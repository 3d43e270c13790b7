"""/v1/evaluations: create (JSON or multipart), get, list, tag, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from app.api.bodies import TensorBody
from app.api.deps import INLINE_BYTES, ResourcesDep, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import DELETION, JSON_WRITE, LISTING, READ, TENSOR_WRITE
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.evaluation.schemas import INTEGER_FIELDS, SLICE_PARTS, TENSOR_FIELDS, EvaluationOut, EvaluationRequest
from app.examples import examples
from app.records import EvaluationFilter, Page, Tags

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], route_class=StrictJsonRoute)
EVALUATION = TensorBody(EvaluationRequest, TENSOR_FIELDS, INTEGER_FIELDS, SLICE_PARTS)


@router.post(
    "",
    operation_id="createEvaluation",
    status_code=201,
    response_model=EvaluationOut,
    response_model_exclude_none=False,
    summary="Compute losses and metrics of predictions, and store them",
    responses={**TENSOR_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(EVALUATION.openapi()),
)
async def create_evaluation(request: Request) -> Response:
    body, arrays = await EVALUATION.read(request)
    resources = resources_of(request)  # no Depends on the hot path: dependency solving costs ~0.2 ms
    touches_storage = body.store or body.calibrator_id is not None or body.sdm_id is not None
    inline = not touches_storage and sum(a.nbytes for a in arrays.values()) <= INLINE_BYTES
    # Serialized once by the model itself (the declared response_model documents it).
    return await created(request, "evaluation", resources.evaluations.create, body, arrays, inline=inline)


@router.get(
    "",
    operation_id="listEvaluations",
    response_model=Page[EvaluationOut],
    summary="List evaluations, newest first",
    responses=LISTING,
)
def list_(
    resources: ResourcesDep,
    model: str | None = None,
    dataset: str | None = None,
    tag: Annotated[
        list[str] | None,
        Query(description="key:value, or a bare key for any value (as in gate baselines); repeat to require several."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[EvaluationOut]:
    return resources.evaluations.page(EvaluationFilter.selecting(model, dataset, tag or []), limit, cursor)


@router.get(
    "/{evaluation_id}",
    operation_id="getEvaluation",
    response_model=EvaluationOut,
    summary="One stored evaluation",
    responses=READ,
)
def get(
    evaluation_id: str,
    resources: ResourcesDep,
    per_sample: Annotated[bool, Query(description="Include the stored per-row loss values.")] = False,
) -> EvaluationOut:
    return resources.evaluations.get(evaluation_id, per_sample)


class TagsBody(BaseModel):
    model_config = examples({"tags": {"prod": "true"}})

    tags: Tags


@router.post(
    "/{evaluation_id}/tags",
    operation_id="setEvaluationTags",
    response_model=EvaluationOut,
    summary="Set tags (e.g. promote to prod)",
    responses=JSON_WRITE,
)
def set_tags(evaluation_id: str, body: TagsBody, resources: ResourcesDep) -> EvaluationOut:
    """`caliper promote EVAL_ID --tag prod` sets tag `prod` (value `true`); a gate's baseline selector
    `{"tag": "prod"}` then picks the newest such evaluation."""
    return resources.evaluations.set_tags(evaluation_id, body.tags)


@router.delete(
    "/{evaluation_id}",
    operation_id="deleteEvaluation",
    status_code=204,
    summary="Delete an evaluation and its arrays",
    responses=DELETION,
)
def delete(evaluation_id: str, resources: ResourcesDep) -> Response:
    resources.evaluations.delete(evaluation_id)
    return Response(status_code=204)

"""/v1/pipelines: named, versioned deployments of a model with its heads, and their composed export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from app.api.deps import ResourcesDep
from app.api.json_body import StrictJsonRoute
from app.api.problems import DELETION, JSON_WRITE, LISTING, READ
from app.pipelines.schemas import PipelineOut, PipelineRequest
from app.records import Page

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"], route_class=StrictJsonRoute)


@router.post(
    "",
    operation_id="createPipeline",
    status_code=201,
    response_model=PipelineOut,
    summary="Deploy a model with its heads under a name (a new version per post); served on /v2 by name",
    responses=JSON_WRITE,
)
def create_pipeline(body: PipelineRequest, resources: ResourcesDep) -> PipelineOut:
    return resources.pipelines.create(body)


@router.get(
    "",
    operation_id="listPipelines",
    response_model=Page[PipelineOut],
    summary="List pipelines, newest first",
    responses=LISTING,
)
def list_(
    resources: ResourcesDep,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[PipelineOut]:
    return resources.pipelines.page(limit, cursor, name=name)


@router.get(
    "/{pipeline_id}",
    operation_id="getPipeline",
    response_model=PipelineOut,
    summary="One pipeline version",
    responses=READ,
)
def get(pipeline_id: str, resources: ResourcesDep) -> PipelineOut:
    return resources.pipelines.get(pipeline_id)


@router.get(
    "/{pipeline_id}/onnx",
    operation_id="getPipelineOnnx",
    summary="The pipeline's composed export (what /v2 runs)",
    responses={**READ, 200: {"content": {"application/octet-stream": {}}}},
    response_class=FileResponse,
)
def onnx_file(pipeline_id: str, resources: ResourcesDep) -> FileResponse:
    filename, path = resources.pipelines.file(pipeline_id)
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.delete(
    "/{pipeline_id}",
    operation_id="deletePipeline",
    status_code=204,
    summary="Delete a pipeline version",
    responses=DELETION,
)
def delete(pipeline_id: str, resources: ResourcesDep) -> Response:
    resources.pipelines.delete(pipeline_id)
    return Response(status_code=204)

"""/v1/pipelines: named, versioned deployments of a model with its heads, and their composed export."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from app.api.deps import ResourcesDep, resources_of
from app.api.json_body import StrictJsonRoute
from app.api.problems import JSON_WRITE, READ
from app.api.respond_async import ACCEPTED, created, with_prefer
from app.api.stored_routes import add_stored_routes
from app.pipelines.schemas import PipelineOut, PipelineRequest

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"], route_class=StrictJsonRoute)


@router.post(
    "",
    operation_id="createPipeline",
    status_code=201,
    response_model=PipelineOut,
    summary="Deploy a model with its heads under a name (a new version per post); served on /v2 by name",
    responses={**JSON_WRITE, **ACCEPTED},
    openapi_extra=with_prefer(),
)
async def create_pipeline(body: PipelineRequest, request: Request) -> Response:
    return await created(request, "pipeline", resources_of(request).pipelines.create, body)


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


add_stored_routes(
    router, lambda r: r.pipelines, PipelineOut, name="Pipeline", thing="pipeline version", things="pipelines",
    id_param="pipeline_id", filters={"name": "name"}, delete="Delete a pipeline version",
)  # fmt: skip

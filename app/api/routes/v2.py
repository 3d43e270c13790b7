"""/v2: the Open Inference Protocol (KServe/Triton V2 REST, with the binary tensor data extension) over
pipelines by name. Errors here follow the protocol, `{"error": "…"}` with a 4xx (503 while no model
worker can start), not problem+json."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.api.auth import role
from app.api.bodies import read_body
from app.api.deps import ResourcesDep, resources_of
from app.api.problems import database_refusal, error_responses, refusal
from app.api.v2_codec import ProtocolError, decode, encode, metadata_body, parse_version
from app.context import Resources
from app.core.errors import InputError
from app.models.workers import ModelLimitError, ModelRunError, WorkerUnavailableError
from app.records import NotFoundError
from app.storage.errors import DATABASE_ERRORS
from app.storage.migrate import is_at_head

BINARY_HEADER = "Inference-Header-Content-Length"
INFLATE_STEP = 1 << 20
STATUS: dict[type[Exception], int] = {
    ProtocolError: 400,
    NotFoundError: 404,
    InputError: 400,
    ModelRunError: 400,
    ModelLimitError: 422,
    WorkerUnavailableError: 503,
}


class V2Route(APIRoute):
    """Every failure of a /v2 route as the protocol's `{"error": message}`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def protocol_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except DATABASE_ERRORS as exc:  # unreachable (retry after 5 s) or not migrated (final)
                refused = database_refusal(exc)
                if refused is None:
                    raise
                return refusal(request.url.path, *refused)
            except tuple(STATUS) as exc:
                return JSONResponse({"error": str(exc)}, status_code=STATUS[type(exc)])

        return protocol_errors


router = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route)


class V2ErrorBody(BaseModel):
    """The protocol's error object (operation ids here are the protocol's own names: serverLive, modelInfer, …)."""

    error: str


ERROR_TEXTS = {
    400: "Bad request, or not ready (the message says why).",
    404: "Unknown pipeline or version.",
    422: "The model exceeded its memory or time limit.",
    503: "No model worker could be started, or the database is unreachable (Retry-After) or not migrated.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The protocol errors a /v2 route can answer."""
    return error_responses(codes, ERROR_TEXTS, "application/json", "V2ErrorBody")


ERRORS = errors(400, 404)


@router.get("", operation_id="serverMetadata", summary="Server metadata (V2)")
async def server_metadata() -> dict[str, Any]:  # on the event loop: nothing here blocks
    return {"name": "caliper", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", operation_id="serverLive", summary="The server is live (V2)")
async def live() -> dict[str, bool]:  # on the event loop: nothing here blocks
    return {"live": True}


@router.get(
    "/health/ready",
    operation_id="serverReady",
    summary="The server is ready: database reachable, schema at head (V2)",
    responses=errors(400),
)
async def ready(resources: ResourcesDep) -> Response:
    if not await run_in_threadpool(is_at_head, resources.settings, resources.engine):
        return JSONResponse({"ready": False, "error": "database schema is not at head"}, status_code=400)
    return JSONResponse({"ready": True})


def _metadata(resources: Resources, name: str, version: str | None) -> dict[str, Any]:
    return metadata_body(resources.inference.metadata(name, parse_version(version)))


@router.get(
    "/models/{name}",
    operation_id="modelMetadata",
    summary="Pipeline metadata (V2; the latest version)",
    responses=ERRORS,
)
def model_metadata(name: str, resources: ResourcesDep) -> dict[str, Any]:
    return _metadata(resources, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    operation_id="modelVersionMetadata",
    summary="Pipeline version metadata (V2)",
    responses=ERRORS,
)
def version_metadata(name: str, version: str, resources: ResourcesDep) -> dict[str, Any]:
    return _metadata(resources, name, version)


def _ready(resources: Resources, name: str, version: str | None) -> Response:
    readiness = resources.inference.ready(name, parse_version(version))
    if not readiness.ready:
        return JSONResponse({"name": name, "ready": False, "error": readiness.reason}, status_code=400)
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/ready", operation_id="modelReady", summary="Pipeline readiness (V2)", responses=ERRORS)
def model_ready(name: str, resources: ResourcesDep) -> Response:
    return _ready(resources, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    operation_id="modelVersionReady",
    summary="Pipeline version readiness (V2)",
    responses=ERRORS,
)
def version_ready(name: str, version: str, resources: ResourcesDep) -> Response:
    return _ready(resources, name, version)


INFER_BODY = {
    "requestBody": {
        # not marked required, as in app.api.bodies: a generator bug with several media types
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Binary tensor data extension: the JSON header (its length in the "
                    "Inference-Header-Content-Length header), then each binary input's bytes in order.",
                },
            },
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(400, 404, 422, 503),
    200: {
        "description": "JSON, or with binary outputs the JSON header (Inference-Header-Content-Length) and their "
        "bytes.",
        "content": {"application/json": {}, "application/octet-stream": {}},
    },
}


async def _infer(request: Request, name: str, version: str | None) -> Response:
    resources = resources_of(request)
    header = request.headers.get(BINARY_HEADER)
    settings = resources.settings
    limit = settings.max_body_bytes if header is not None else settings.max_json_bytes  # JSON alone: the JSON limit
    body = _decompressed(await read_body(request), request.headers.get("content-encoding"), limit)
    if header is not None and not header.strip().isdigit():
        raise ProtocolError(f"{BINARY_HEADER} must be a non-negative integer, got {header!r}")
    length = int(header) if header is not None else None
    content, json_length = await run_in_threadpool(_answer, resources, name, parse_version(version), body, length)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={BINARY_HEADER: str(json_length)})


def _answer(
    resources: Resources, name: str, version: int | None, body: bytes | bytearray, header_length: int | None
) -> tuple[bytes | memoryview, int | None]:
    """Decode, infer, encode (in a worker thread). The pipeline is resolved first, so an unknown one is
    a 404 whatever the body."""
    inference = resources.inference
    inference.pipeline(name, version)
    request = decode(body, header_length)
    answer = inference.infer(name, version, request.inputs, list(request.outputs) or None)
    return encode(answer, request.id, request.binary(list(answer.outputs)))


def _decompressed(body: bytes | bytearray, encoding: str | None, max_bytes: int) -> bytes | bytearray:
    """The body, inflated for `Content-Encoding: gzip|deflate` (deflate: zlib-wrapped, as tritonclient and
    browsers send it, or raw), at most max_bytes (a small body cannot inflate without bound)."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return body
    formats = {"gzip": [16 + zlib.MAX_WBITS], "deflate": [zlib.MAX_WBITS, -zlib.MAX_WBITS]}.get(name)
    if formats is None:
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    fault: zlib.error | None = None
    for wbits in formats:
        try:
            return _inflated(zlib.decompressobj(wbits), body, max_bytes, name)
        except zlib.error as exc:
            fault = exc
    raise ProtocolError(f"the body is not valid {name} data: {fault}")


def _inflated(inflater: Any, body: bytes | bytearray, max_bytes: int, name: str) -> bytes:
    """Inflated in steps of INFLATE_STEP, so memory follows what the data really holds and a bomb is
    refused as soon as it passes `max_bytes` (not after a buffer of the whole limit is filled)."""
    out = bytearray()
    pending = body
    while pending and not inflater.eof:
        out += inflater.decompress(pending, INFLATE_STEP)
        pending = inflater.unconsumed_tail
        if len(out) > max_bytes:
            raise ProtocolError(f"the inflated body exceeds its limit of {max_bytes} bytes (CALIPER_MAX_JSON_BYTES "
                               "for JSON, CALIPER_MAX_BODY_BYTES with binary data)")  # fmt: skip
    if not inflater.eof:
        raise ProtocolError(f"the {name} body is truncated")
    return bytes(out)


@router.post(
    "/models/{name}/infer",
    operation_id="modelInfer",
    summary="Run the pipeline (V2; the latest version)",
    responses=INFER_RESPONSES,
    openapi_extra={**INFER_BODY, **role("read")},  # inference stores nothing
)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    operation_id="modelVersionInfer",
    summary="Run a pipeline version (V2)",
    responses=INFER_RESPONSES,
    openapi_extra={**INFER_BODY, **role("read")},  # inference stores nothing
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(request, name, version)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def unknown(path: str) -> Response:
    """Any other path under /v2 answers the protocol's error object, not problem+json."""
    return JSONResponse({"error": f"no V2 endpoint /v2/{path}"}, status_code=404)

"""V2 over gRPC: the Open Inference Protocol's `inference.GRPCInferenceService` (health, metadata,
inference) beside the REST /v2 routes, on the same data plane (`app.pipelines.inference`) and with the
same keys. Off unless CALIPER_GRPC_PORT is set.

- **Auth.** Every call names an API key in its metadata, as REST does in its headers
  (`authorization: Bearer <key>` or `x-api-key: <key>`; tritonclient passes them with `headers=`):
  UNAUTHENTICATED without a valid live key, and the call runs in its key's project. Every RPC needs the
  `read` role (inference stores nothing, as on REST).
- **Errors.** A domain error keeps its meaning: INVALID_ARGUMENT (REST's 400), NOT_FOUND (404),
  RESOURCE_EXHAUSTED (422: the model's memory or time limit; also more calls than the server admits),
  UNAVAILABLE (503: no model worker, or the database unreachable or not migrated), INTERNAL (500, logged).
- **Observability.** Calls are counted and timed in /metrics (`caliper_grpc_calls`,
  `caliper_grpc_call_seconds`) and written to the access log with a request id, as HTTP requests are.
- **Server.** grpcio's synchronous server: a call runs on one of CALIPER_MAX_RUNNING_WORK threads,
  CALIPER_MAX_WAITING_WORK more may wait, and a message may be CALIPER_MAX_BODY_BYTES. Every process of
  `caliper serve --workers N` binds the port with SO_REUSEPORT (grpcio's default), so the kernel spreads
  connections over them as it does for HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from app import __version__
from app.api.observability import REQUEST_ID, access, new_request_id
from app.api.problems import database_refusal
from app.api.v2_codec import ProtocolError
from app.context import Resources
from app.core.errors import InputError
from app.grpc_api import codec
from app.grpc_api import open_inference_pb2 as pb
from app.models.workers import ModelLimitError, ModelRunError, WorkerUnavailableError
from app.records import NotFoundError
from app.storage.errors import DATABASE_ERRORS
from app.storage.keys import Principal
from app.storage.migrate import is_at_head
from app.storage.tenancy import project_scope

SERVICE = "inference.GRPCInferenceService"  # the protocol's name: what the wire carries in every call's path
STATUS: dict[type[Exception], grpc.StatusCode] = {
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelRunError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WorkerUnavailableError: grpc.StatusCode.UNAVAILABLE,
}
log = logging.getLogger("caliper.grpc")


class InferenceServicer:
    """The protocol's six calls over the service's resources (each after `authorised` has passed)."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.inference = resources.inference

    def ServerLive(self, request: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any) -> Any:
        return pb.ServerReadyResponse(ready=is_at_head(self.resources.settings, self.resources.engine))

    def ServerMetadata(self, request: Any) -> Any:
        return pb.ServerMetadataResponse(name="caliper", version=__version__)

    def ModelMetadata(self, request: Any) -> Any:
        return codec.metadata_message(self.inference.metadata(request.name, codec.version_of(request.version)))

    def ModelReady(self, request: Any) -> Any:
        """Not ready, rather than NOT_FOUND, for an unknown pipeline, as Triton answers (a client polling
        for a deployment gets False until it is there)."""
        try:
            readiness = self.inference.ready(request.name, codec.version_of(request.version))
        except NotFoundError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=readiness.ready)

    def ModelInfer(self, request: Any) -> Any:
        self.inference.pipeline(request.model_name, codec.version_of(request.model_version))  # unknown: NOT_FOUND
        decoded = codec.decode(request)
        answer = self.inference.infer(decoded.name, decoded.version, decoded.inputs, decoded.outputs)
        return codec.encode(answer, decoded.id)


CALLS: dict[str, Any] = {  # each call's request message
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


def presented_key(metadata: tuple[tuple[str, str | bytes], ...]) -> str | None:
    """The key of a call's metadata: `authorization: Bearer <key>`, else `x-api-key`."""
    given = {key: value for key, value in metadata if isinstance(value, str)}
    bearer = given.get("authorization")
    if bearer is not None:
        scheme, _, token = bearer.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return given.get("x-api-key")


class Refused(Exception):
    """A call refused before it runs: its status code and why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def caller(resources: Resources, metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
    """Who calls, from the call's metadata (Refused: UNAUTHENTICATED or PERMISSION_DENIED)."""
    settings = resources.settings
    if not settings.auth_required():
        return Principal(settings.project, "admin")
    token = presented_key(metadata)
    if token is None:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "an API key is required: `authorization: Bearer <key>` or "
                      "`x-api-key` in the call's metadata")  # fmt: skip
    principal = resources.api_keys.recent(token) or resources.api_keys.authenticate(token)
    if principal is None:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
    if not principal.may("read"):
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"this key's role ({principal.role}) may not call: needs read")
    return principal


def authorised(
    resources: Resources, method: str, call: Callable[[Any], Any]
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """`call` behind the key check, in the key's project, its faults as the protocol's status codes, counted
    and timed in /metrics and written to the access log as HTTP requests are."""
    metrics, access_log = resources.metrics, resources.settings.access_log

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        started, code, project = time.perf_counter(), grpc.StatusCode.OK, None
        request_id = new_request_id()
        token = REQUEST_ID.set(request_id)
        try:
            project = caller(resources, context.invocation_metadata()).project
            with project_scope(project):
                return call(request)
        except Exception as exc:
            code, detail = status_of(exc)
            context.abort(code, detail)
        finally:
            seconds = time.perf_counter() - started
            metrics.grpc_calls.labels(method, code.name).inc()
            metrics.grpc_latency.labels(method).observe(seconds)
            if access_log:
                line = {"request_id": request_id, "project": project, "method": f"grpc {method}",
                        "status": code.name, "duration_ms": round(seconds * 1e3, 3)}  # fmt: skip
                access.info("gRPC %s %s", method, code.name, extra={"fields": line})
            REQUEST_ID.reset(token)

    return handle


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call's fault; an unexpected one is logged with its traceback and
    answered INTERNAL without its text (as REST answers 500)."""
    if isinstance(exc, Refused):
        return exc.code, str(exc)
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code, str(exc)
    refused = database_refusal(exc) if isinstance(exc, DATABASE_ERRORS) else None
    if refused is not None:
        return grpc.StatusCode.UNAVAILABLE, refused.detail
    log.exception("unexpected error in a V2 gRPC call")
    return grpc.StatusCode.INTERNAL, f"unexpected error (request id {REQUEST_ID.get()}; see the server log)"


def handler(resources: Resources) -> grpc.GenericRpcHandler:
    servicer = InferenceServicer(resources)
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                authorised(resources, name, getattr(servicer, name)),
                request_deserializer=message.FromString,
                response_serializer=lambda response: response.SerializeToString(),
            )
            for name, message in CALLS.items()
        },
    )


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int  # the port bound (CALIPER_GRPC_PORT, or the one picked for 0)

    def stop(self, grace_s: float = 5.0) -> None:
        self.server.stop(grace_s).wait()


def serve(resources: Resources) -> GrpcServer:
    """Start the service on CALIPER_HOST:CALIPER_GRPC_PORT (0: a free port)."""
    settings = resources.settings
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.max_running_work, thread_name_prefix="grpc"),
        handlers=[handler(resources)],
        maximum_concurrent_rpcs=settings.max_running_work + settings.max_waiting_work,
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ],
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = server.add_insecure_port(f"{host}:{settings.grpc_port or 0}")
    server.start()
    log.info("V2 gRPC service on %s:%d", host, port)
    return GrpcServer(server, port)

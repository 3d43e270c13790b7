"""RFC 9457 problem details for every error the service returns."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.deadline import CancelledError, TimeLimitError
from app.core.errors import InputError
from app.models.workers import ModelLimitError, ModelRunError, WorkerUnavailableError
from app.records import ConflictError, NotFoundError
from app.storage.blobs import CorruptBlobError
from app.storage.errors import DATABASE_ERRORS, database_state

PROBLEM_JSON = "application/problem+json"
UNMIGRATED = "the database is not migrated: run `caliper db upgrade` (nothing was stored; retrying will not help)"
log = logging.getLogger("caliper")

TITLES: dict[int | str, str] = {
    "model-limits": "The model exceeded its limits",
    "time-limit": "The work exceeded the request's time limit",
    "cancelled": "The job was cancelled",
    "overloaded": "The server is at capacity",
    "migrations-pending": "The database is not migrated",
    408: "Request timeout",
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    503: "Database unavailable",
}


class FieldError(BaseModel):
    field: str = Field(description="The field at fault, dotted (`params.bins`, `inputs.x`); empty for the body.")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem: every 4xx and 5xx of /v1 and the health routes."""

    type: str = Field(description="A URI naming the kind of problem, e.g. https://caliper.dev/problems/422.")
    title: str
    status: int
    detail: str = Field(description="What went wrong, naming the field and the fault.")
    errors: list[FieldError] = Field(default_factory=list, description="One entry per faulty field.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "type": "https://caliper.dev/problems/422",
                    "title": "Invalid input",
                    "status": 422,
                    "detail": "labels: values must be in [0, C) = [0, 2)",
                    "errors": [{"field": "labels", "message": "values must be in [0, C) = [0, 2)"}],
                }
            ]
        }
    }


PROBLEM_TEXTS = {
    400: "Malformed JSON or multipart body.",
    404: "Unknown id (of the resource or of one it names).",
    409: "The resource is in use (the message lists what uses it).",
    413: "Body over CALIPER_MAX_BODY_BYTES (or its JSON over CALIPER_MAX_JSON_BYTES).",
    415: "Not JSON or multipart.",
    422: "Bad tensors or parameters (the message names the field), a model over its limits (`model-limits`) or "
    "work over the request time limit (`time-limit`).",
    503: "Database down, migrations pending, no model worker or the server at capacity (`overloaded`); nothing "
    "stored. Retry after Retry-After.",
}


def error_responses(
    codes: tuple[int, ...], texts: dict[int, str], media_type: str, schema: str
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the error statuses a route can answer, each with one body schema."""
    content = {media_type: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return {code: {"description": texts[code], "content": content} for code in codes}


def document_error(path: str, operation: dict[str, Any], status: int, text: str) -> None:
    """Adds an error answer that a middleware gives (auth, limits) to one operation of the OpenAPI schema,
    with the body of its path: the V2 protocol's error object on /v2, else a problem."""
    body, media = ("V2ErrorBody", "application/json") if path.startswith("/v2") else ("Problem", PROBLEM_JSON)
    content = {media: {"schema": {"$ref": f"#/components/schemas/{body}"}}}
    operation.setdefault("responses", {}).setdefault(str(status), {"description": text, "content": content})


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The problem statuses a route can answer, each with the Problem schema."""
    return error_responses(codes, PROBLEM_TEXTS, PROBLEM_JSON, "Problem")


TENSOR_WRITE = problems(400, 404, 413, 415, 422, 503)  # hand-parsed JSON or multipart bodies with tensors
JSON_WRITE = problems(400, 404, 413, 422, 503)  # JSON bodies FastAPI parses
READ = problems(404, 422, 503)  # one resource (422: a bad query parameter)
LISTING = problems(422, 503)
DELETION = problems(404, 503)


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem body."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers


MAX_DETAIL = 1000  # characters; error texts echo field names and input, which are the client's and unbounded
MAX_ERRORS = 20


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """An RFC 9457 answer (`problem_body`)."""
    body = problem_body(status, detail, errors, kind, extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_body(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    kind: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An RFC 9457 body (with the problem's own `extensions` members); echoed text is clipped (detail to
    1,000 characters, each error's field and message to 200, at most 20 errors), so a bad 1 MB key cannot
    make a 2 MB error."""
    return {
        **(extensions or {}),
        "type": f"https://caliper.dev/problems/{kind or status}",
        "title": TITLES.get(kind or status, "Error"),
        "status": status,
        "detail": _clip(detail, MAX_DETAIL),
        "errors": [{k: _clip(str(v), 200) for k, v in e.items()} for e in (errors or [])[:MAX_ERRORS]],
    }


class Refusal(NamedTuple):
    """A middleware's answer before any route runs (see `refusal`)."""

    status: int
    detail: str
    headers: dict[str, str]
    kind: str | None = None


def database_refusal(exc: BaseException) -> Refusal | None:
    """(status, detail, headers, kind) for a database that cannot serve a request: not migrated (no
    Retry-After, since waiting will not help, so clients stop) or unreachable (retry after 5 s); None for
    any other database error."""
    state = database_state(exc)
    if state == "unmigrated":
        return Refusal(503, UNMIGRATED, {}, "migrations-pending")
    if state == "unavailable":
        return Refusal(503, "the database is unreachable; nothing was stored, retry later", {"Retry-After": "5"})
    return None


def refusal(path: str, status: int, detail: str, headers: dict[str, str], kind: str | None = None) -> JSONResponse:
    """A refusal by a middleware before any route runs: problem+json on /v1 and /ui, the V2 protocol's
    `{"error"}` on /v2."""
    if path.startswith("/v2"):
        return JSONResponse({"error": detail}, status_code=status, headers=headers)
    return problem_response(status, detail, headers=headers, kind=kind)


def _pydantic_errors(
    exc: ValidationError | RequestValidationError, prefix: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        loc = [str(p) for p in (*prefix, *loc)]
        errors.append({"field": ".".join(loc), "message": err.get("msg", "invalid")})
    return errors


class Answer(NamedTuple):
    """The parts of a problem answer: status, detail, errors, kind (the `type` suffix), headers."""

    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None
    kind: str | None = None
    headers: dict[str, str] | None = None


def validation_answer(exc: ValidationError | RequestValidationError) -> Answer:
    errors = _pydantic_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5])
    return Answer(422, detail or "invalid request", errors)


def domain_answer(exc: BaseException) -> Answer | None:
    """The answer to an error of the use cases or of the input (None for any other): the same for a
    request and for a job, whose `error` is the problem the synchronous call would have answered."""
    match exc:
        case ProblemError():
            return Answer(exc.status, exc.detail, exc.errors, None, exc.headers)
        case NotFoundError():
            return Answer(404, str(exc))
        case ConflictError():
            return Answer(409, str(exc))
        case ModelLimitError():
            return Answer(422, str(exc), kind="model-limits")
        case TimeLimitError():
            return Answer(422, str(exc), kind="time-limit")
        case CancelledError():
            return Answer(409, str(exc), kind="cancelled")
        case ModelRunError():
            return Answer(422, f"onnxruntime refused the model or its inputs: {exc}")
        case WorkerUnavailableError():
            return Answer(503, str(exc), headers={"Retry-After": "5"})
        case InputError():
            return Answer(422, str(exc), [{"field": exc.field, "message": exc.message}])
        case ValidationError() | RequestValidationError():
            return validation_answer(exc)
        case StarletteHTTPException():
            return Answer(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
    return None


DOMAIN_ERRORS = (
    ProblemError, NotFoundError, ConflictError, ModelLimitError, TimeLimitError, CancelledError, ModelRunError,
    WorkerUnavailableError, InputError, ValidationError, RequestValidationError, StarletteHTTPException,
)  # fmt: skip


def problem_of(exc: BaseException) -> dict[str, Any]:
    """The problem body of any exception, for a job's `error`: the domain's answer, the database's
    refusal, or a logged 500."""
    answer = domain_answer(exc)
    if answer is None:
        refused = database_refusal(exc)
        if refused is not None:
            answer = Answer(refused.status, refused.detail, [], refused.kind)
        else:
            log.error("unhandled error in a job", exc_info=exc)
            answer = Answer(500, "internal error; nothing was stored")
    return problem_body(answer.status, answer.detail, answer.errors, answer.kind)


class UnexpectedErrors:
    """Any other exception becomes a 500 problem here, inside the app. A handler for `Exception` would
    run in Starlette's ServerErrorMiddleware, which re-raises to the server, and uvicorn then closes the
    client's keep-alive connection after every 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.info("the client disconnected before its request was read; nothing was stored")
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error", exc_info=exc)
            await problem_response(500, "internal error; nothing was stored")(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    async def _domain(_: Request, exc: Exception) -> JSONResponse:
        answer = domain_answer(exc)
        assert answer is not None  # registered for DOMAIN_ERRORS only
        return problem_response(answer.status, answer.detail, answer.errors, answer.headers, answer.kind)

    for error in DOMAIN_ERRORS:
        app.add_exception_handler(error, _domain)

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        """503 for a database that is not migrated or does not answer; 500 for any other failure."""
        refused = database_refusal(exc)
        if refused is None:
            log.exception("database error", exc_info=exc)
            request.app.state.resources.metrics.database_errors.labels("error").inc()
            return problem_response(500, "internal database error")
        log.warning("database unavailable: %s", exc)
        request.app.state.resources.metrics.database_errors.labels("unavailable").inc()
        return refusal(request.url.path, *refused)

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, _database)

    @app.exception_handler(CorruptBlobError)
    async def _corrupt(_: Request, exc: CorruptBlobError) -> JSONResponse:
        log.error("%s", exc)
        return problem_response(500, f"{exc}; the stored record cannot be read and was not used")

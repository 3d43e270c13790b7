"""Request ids and Prometheus metrics (api.md, "Conventions"), as one pure ASGI middleware outermost in
the stack, so every answer (problems, 413s from the body limit, /v2 errors) carries `X-Request-ID` and is
counted. The id is the client's when it is a short printable token, else a new one; log records made
while the request runs carry it (`request_id`), and `JsonLines` writes them as JSON lines."""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import logging
import os
import re
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

REQUEST_ID = contextvars.ContextVar("request_id", default="-")
# The rows of the request's tensors, as a one-item list the route fills in (a route may run in a copy of
# the middleware's context, so the middleware reads back a mutable holder rather than a variable).
REQUEST_ROWS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("request_rows", default=None)
access = logging.getLogger("caliper.access")


def count_rows(rows: int) -> None:
    """Called where a request's tensors are decoded: the access line reports the largest row count."""
    holder = REQUEST_ROWS.get()
    if holder is not None:
        holder[0] = max(holder[0], rows)


HEADER = b"x-request-id"
MAX_ID = 128


_ID_PREFIX = secrets.token_hex(10)  # this process's (a forked child makes its own): unique across processes
_ID_COUNTER = itertools.count()


def _new_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = secrets.token_hex(10)


os.register_at_fork(after_in_child=_new_prefix)  # a forked server process must not repeat its parent's ids


def new_request_id() -> str:
    """32 hex digits, unique (a random per-process prefix and a counter): uuid4 read the OS's random
    source on every request, 6% of the event loop's time under single-row load (py-spy)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) % 16**12:012x}"


def _given_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == HEADER:
            text: str = value.decode("latin-1")
            if 0 < len(text) <= MAX_ID and text.isprintable() and text.isascii() and " " not in text:
                return text
    return None


CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection before the answer


def route_template(scope: Scope) -> str:
    """The route's template (`/v1/models/{model_id}`), also for a request a middleware answered before
    routing (a 503 while the database is down): then matched against the OpenAPI document's paths."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    app = scope.get("app")
    paths = app.openapi().get("paths", {}) if app is not None and hasattr(app, "openapi") else {}
    method = str(scope.get("method", "")).lower()
    return next(
        (
            path
            for path, operations in paths.items()
            if method in operations and _template(path).fullmatch(scope["path"])
        ),
        "unmatched",
    )


@functools.cache
def _template(path: str) -> re.Pattern[str]:
    """`/v1/models/{model_id}` as a pattern of the paths it names."""
    return re.compile(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)))


class RequestContext:
    """Sets the request id, adds `X-Request-ID` to the answer, counts it by method, route template
    (`/v1/models/{model_id}`, not the id: bounded label values) and status, and (`access_log`) writes one
    log record per request: id, project, method, route, status, duration and rows."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True) -> None:
        self.app, self.metrics, self.access_log = app, metrics, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _given_id(scope) or new_request_id()
        token = REQUEST_ID.set(request_id)
        rows = [0]
        rows_token = REQUEST_ROWS.set(rows)
        started = time.perf_counter()
        answered: int | None = None
        disconnected = False

        async def watched_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, watched_receive, send_with_id)
        finally:
            # a client that left before its answer is no server error: counted as nginx's 499
            status = answered if answered is not None else (CLIENT_CLOSED if disconnected else 500)
            route = route_template(scope)
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(seconds)
            if rows[0]:
                self.metrics.request_rows.labels(route).inc(rows[0])
            if self.access_log:
                principal = scope.get("caliper.principal")
                line = {
                    "request_id": request_id,  # also when the record is formatted later (queued handlers)
                    "project": getattr(principal, "project", None),
                    "method": scope["method"],
                    "route": route,
                    "path": scope["path"][:200],
                    "status": status,
                    "duration_ms": round(seconds * 1e3, 3),
                    "rows": rows[0],
                }
                access.info("%s %s %d", scope["method"], line["path"], status, extra={"fields": line})
            REQUEST_ROWS.reset(rows_token)
            REQUEST_ID.reset(token)


class JsonLines(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message, request id (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: the Prometheus text format (no key needed, as /healthz)."""
    metrics: Metrics = request.app.state.resources.metrics
    return metrics.response()

"""Request ids and Prometheus metrics (api.md, "Conventions"), as one pure ASGI middleware outermost in
the stack, so every answer (problems, 413s from the body limit, /v2 errors) carries `X-Request-ID` and is
counted. The id is the client's when it is a short printable token, else a new one; log records made
while the request runs carry it (`request_id`), and `JsonLines` writes them as JSON lines."""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
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


def _given_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == HEADER:
            text: str = value.decode("latin-1")
            if 0 < len(text) <= MAX_ID and text.isprintable() and text.isascii() and " " not in text:
                return text
    return None


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
        request_id = _given_id(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        rows = [0]
        rows_token = REQUEST_ROWS.set(rows)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
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

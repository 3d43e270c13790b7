"""Request limits as pure ASGI middleware, applied before any route runs: the body size (413 from
Content-Length, or as soon as a streamed body passes the limit), NUL characters in the URL and the `Host`
names a keyless server answers to."""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.json_body import json_too_large
from app.api.problems import PROBLEM_JSON, TITLES
from app.metrics import Metrics


class BodyTooLargeError(HTTPException):
    """An HTTPException, so that a route reading its body (FastAPI's own JSON parsing included) passes it
    on as a 413 instead of turning it into a 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


class ResponseStarted:
    """`send`, noting whether the response has begun: after that a limit can no longer answer a problem."""

    def __init__(self, send: Send) -> None:
        self.send, self.started = send, False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class BodySizeLimit:
    """413 before anything is read when Content-Length is over the limit, else as soon as the streamed
    body passes it. A JSON body's limit is CALIPER_MAX_JSON_BYTES (its parse takes ~3x its size), any
    other's CALIPER_MAX_BODY_BYTES."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_bytes: int) -> None:
        self.app, self.max_bytes, self.max_json_bytes = app, max_bytes, max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = media_type == b"application/json"
        limit = min(self.max_bytes, self.max_json_bytes) if is_json else self.max_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_problem(send, 413, self._detail(int(declared), is_json))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(self._detail(None, is_json))
            return message

        answer = ResponseStarted(send)
        try:
            await self.app(scope, limited_receive, answer)
        except BodyTooLargeError as exc:
            if not answer.started:
                await send_problem(send, 413, exc.detail)

    def _detail(self, size: int | None, is_json: bool) -> str:
        if is_json and self.max_json_bytes < self.max_bytes:
            return json_too_large(size, self.max_json_bytes)
        return f"request body exceeds the limit of {self.max_bytes} bytes (CALIPER_MAX_BODY_BYTES)"


class BodyTimeoutError(HTTPException):
    """An HTTPException, as `BodyTooLargeError`, so a route reading its body passes it on as a 408."""

    def __init__(self) -> None:
        super().__init__(
            408,
            "the request body arrived too slowly (CALIPER_BODY_TIMEOUT_S, CALIPER_BODY_MIN_BYTES_PER_S)",
            headers={"Connection": "close"},
        )


class BodyReadDeadline:
    """A slow client cannot hold a connection and a worker forever: the body must arrive within
    `timeout_s` plus one second per `min_rate` bytes received so far (Apache mod_reqtimeout's
    `body=…,MinRate=…`), else 408 and the connection is closed. Headers have their own deadline in the
    server (`app.api.server`)."""

    def __init__(self, app: ASGIApp, timeout_s: float, min_rate: int, metrics: Metrics) -> None:
        self.app, self.timeout_s, self.min_rate, self.metrics = app, timeout_s, min_rate, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        received = 0
        complete = timed_out = False

        async def timed_receive() -> Message:
            nonlocal received, complete, timed_out
            if complete:  # after the body: waiting for a disconnect, which has no deadline
                return await receive()
            remaining = started_at + self.timeout_s + received / self.min_rate - loop.time()
            try:  # a timeout on this task: wait_for made a task per message (14.5 µs each against 4.3 µs here)
                async with asyncio.timeout(max(remaining, 0.0)):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise BodyTimeoutError() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            return message

        answer = ResponseStarted(send)
        try:
            await self.app(scope, timed_receive, answer)
        except BodyTimeoutError as exc:
            if not answer.started:
                await send_problem(send, 408, exc.detail, close=True)
        finally:
            if timed_out:
                self.metrics.refusals.labels("body-timeout").inc()


class RefuseNulInUrl:
    """A NUL character (%00) in the path or query answers 400: PostgreSQL text cannot hold one, so an id,
    filter or cursor carrying it could never match and would fail in the driver."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path", b"") + b"?" + scope.get("query_string", b"")
            if b"\x00" in raw or b"%00" in raw or "\x00" in scope.get("path", ""):
                await send_problem(send, 400, "the URL contains a NUL character (%00)")
                return
        await self.app(scope, receive, send)


class AllowedHosts:
    """400 for a `Host` not among `names` (None: any), as MLflow's --allowed-hosts and Jupyter do: a page on
    attacker.example whose DNS name is rebound to 127.0.0.1 then reaches the server same-origin, and only
    its `Host` header tells it apart (CALIPER_ALLOWED_HOSTS)."""

    def __init__(self, app: ASGIApp, names: frozenset[str] | None) -> None:
        self.app, self.names = app, names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.names is not None:
            host = _host_name(dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1"))
            if host not in self.names:
                detail = f"Host {host[:100]!r} is not one this server answers to (CALIPER_ALLOWED_HOSTS)"
                await send_problem(send, 400, detail)
                return
        await self.app(scope, receive, send)


def _host_name(header: str) -> str:
    """The name of a Host header, without its port: `[::1]:8000` -> `::1`, `localhost:8000` -> `localhost`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


async def send_problem(send: Send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps(
        {
            "type": f"https://caliper.dev/problems/{status}",
            "title": TITLES[status],
            "status": status,
            "detail": detail,
            "errors": [],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *([(b"connection", b"close")] if close else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""Serving the app with uvicorn (httptools), plus what uvicorn lacks against slow clients, and several
processes. uvicorn has no header-read timeout, so a client that sends its headers a byte at a time holds
a connection (and a file descriptor) for ever: `HeaderDeadlineProtocol` closes it. Bodies have their own
deadline in the app (`app.api.limits.BodyReadDeadline`); `limit_concurrency` bounds the connections per
process (503 beyond), `HeaderDeadlineProtocol` those of one client address. With `workers > 1` uvicorn's
supervisor runs N processes and replaces one that dies; their Prometheus values go to a shared
PROMETHEUS_MULTIPROC_DIR that /metrics sums."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import tempfile
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, get_settings
from app.metrics import MULTIPROCESS_DIR

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
CLIENT_OVER_CAP = b"this client address holds too many connections; retry after closing some"
FILES_PER_PROCESS = 256  # descriptors beyond the connections: the database pool, sessions, logs, workers' pipes


async def client_over_cap(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The app of a connection opened beyond its address's cap: 503 with Retry-After, then closed."""
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1"), (b"connection", b"close"),
               (b"content-length", str(len(CLIENT_OVER_CAP)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": CLIENT_OVER_CAP, "more_body": False})


def _address_of(protocol: object) -> str | None:
    """A connection's client address (uvicorn's protocols keep `client` as (host, port) where known)."""
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's protocol, with a deadline (CALIPER_HEADER_TIMEOUT_S) on each request's headers: armed
    when the connection opens and when a new request's first byte arrives on a kept-alive one (idle
    kept-alive connections have uvicorn's own keep-alive timeout), cleared when the headers are complete.
    At the deadline a started request gets a bare 408 and the connection is closed. A connection opened
    while its client address already holds CALIPER_MAX_CONNECTIONS_PER_CLIENT answers its request 503
    and closes, so that one client's slow or idle sockets cannot take the process's whole connection cap.
    The settings are read here because uvicorn builds protocols from the class alone, in every process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout_s = settings.header_timeout_s
        self._per_client = settings.max_connections_per_client
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_began = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if self.client is not None:
            address = self.client[0]
            held = sum(1 for other in self.connections if _address_of(other) == address)
            if held > self._per_client:
                self._refused("client-connections")
                self.app = client_over_cap

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_began = True
        if self._header_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._request_began = False
        over = self.limit_concurrency is not None and (  # uvicorn's own test, just before it answers 503 alone
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        )
        super().on_headers_complete()
        if over:
            self._refused("connections")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            if self._request_began:
                self.transport.write(REQUEST_TIMEOUT)
                self._refused("header-timeout")
            self.transport.close()

    def _refused(self, reason: str) -> None:
        """Count a refusal the server made without the app (it never saw the request) in the app's metrics."""
        app: Any = self.app
        while app is not None and getattr(getattr(app, "state", None), "resources", None) is None:
            app = getattr(app, "app", None)  # uvicorn's wrappers (proxy headers, …) hold the app as `.app`
        if app is not None:
            app.state.resources.metrics.refusals.labels(reason).inc()


def json_logs() -> None:
    """The service's own log records as JSON lines on stderr, each with its request id."""
    from app.api.observability import JsonLines

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("caliper")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def worker_app() -> FastAPI:
    """The app of one server process under `--workers N` (uvicorn imports it by name in each process)."""
    from app.api.main import create_app

    json_logs()
    return create_app()


def raise_open_file_limit(connections: int) -> int:
    """The soft RLIMIT_NOFILE raised towards the hard one, enough for `connections` plus the process's own
    files where the hard limit allows; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + FILES_PER_PROCESS
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def serve(settings: Settings, app: FastAPI | None) -> None:
    """One process serving `app`, or (`settings.workers > 1`) uvicorn's supervisor over that many
    processes, each building its own app from the environment (host and port are passed on there)."""
    files = raise_open_file_limit(settings.max_connections)
    if files < settings.max_connections + FILES_PER_PROCESS:
        logging.getLogger("caliper").warning(
            "open-file limit %d is below CALIPER_MAX_CONNECTIONS + %d; connections beyond it are refused",
            files, FILES_PER_PROCESS,
        )  # fmt: skip
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": HeaderDeadlineProtocol,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s,
        "access_log": False,  # the app writes its own JSON access line (CALIPER_ACCESS_LOG)
    }
    if settings.workers == 1:
        assert app is not None
        uvicorn.run(app, **options)
        return
    os.environ.update(CALIPER_HOST=settings.host, CALIPER_PORT=str(settings.port))
    with tempfile.TemporaryDirectory(prefix="caliper-metrics-") as metrics_dir:
        os.environ[MULTIPROCESS_DIR] = metrics_dir
        uvicorn.run("app.api.server:worker_app", factory=True, workers=settings.workers, **options)

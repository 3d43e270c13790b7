"""Backpressure on the expensive work (issue "Trust": limits): every POST computes (fits, evaluations,
scores, model runs, gates), so at most `running` POSTs run at once and at most `waiting` more wait for
a slot; beyond that a POST answers 503 with `Retry-After` at once instead of queueing without bound.
An admitted POST runs under the request time limit (`app.core.deadline`), counted from admission."""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import refusal
from app.core.deadline import time_limit
from app.metrics import Metrics

RETRY_AFTER_S = "1"


class WorkAdmission:
    """The slots are a count and a queue of futures, not an `asyncio.Semaphore`: a semaphore binds to the
    first event loop that waits on it, and an app may outlive a loop (tests, a server restart)."""

    def __init__(self, app: ASGIApp, running: int, waiting: int, time_limit_s: float, metrics: Metrics) -> None:
        self.app, self.running, self.waiting, self.time_limit_s, self.metrics = (
            app, running, waiting, time_limit_s, metrics,
        )  # fmt: skip
        self._busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self._busy >= self.running and len(self._queue) >= self.waiting:
            self.metrics.refusals.labels("overloaded").inc()
            detail = (
                f"the server is at capacity ({self.running} requests running, {self.waiting} waiting: "
                "CALIPER_MAX_RUNNING_WORK, CALIPER_MAX_WAITING_WORK); retry after Retry-After"
            )
            response = refusal(scope["path"], 503, detail, {"Retry-After": RETRY_AFTER_S}, kind="overloaded")
            await response(scope, receive, send)
            return
        await self._acquire()
        try:
            with time_limit(self.time_limit_s):
                await self.app(scope, receive, send)
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._busy < self.running:
            self._busy += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            await turn  # a finishing request hands its slot over
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed a slot just as the wait was cancelled: pass it on
            else:
                self._queue.remove(turn)
            raise

    def _release(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._busy -= 1

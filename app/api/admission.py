"""Backpressure on the expensive work (issue "Trust": limits): every POST computes (fits, evaluations,
scores, model runs, gates), and so does a model's export (a GET), so at most `running` of them run at
once and at most `waiting` more wait for a slot; beyond that one answers 503 with `Retry-After` at once
instead of queueing without bound.

A POST's body is read whole before it asks for a slot (kept in memory up to SPOOL_BYTES, then in a
temporary file), so a client that trickles its body holds no slot while it does, and the time spent
queueing never counts against the body's deadline; at most `reading` bodies of one caller (API key, else
address) are read at once, beyond that 503 too. An admitted POST runs under the request time limit
(`app.core.deadline`), counted from admission."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter, deque
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import refusal
from app.api.rate_limits import caller_of
from app.core.deadline import time_limit
from app.metrics import Metrics

RETRY_AFTER_S = "1"
SPOOL_BYTES = 8 << 20  # a body larger than this waits for its slot in a temporary file, not in memory
REPLAY_CHUNK = 1 << 20


HEAVY_GETS = ("/export",)  # GETs that compute (a model's export: its graph loaded, merged and checked)


def _is_work(scope: Scope) -> bool:
    """Every POST computes; of the GETs, those ending in HEAVY_GETS do."""
    if scope["type"] != "http":
        return False
    method, path = str(scope["method"]), str(scope["path"])
    return method == "POST" or (method == "GET" and path.endswith(HEAVY_GETS))


class BufferedBody:
    """A request body read to its end (or to the client's disconnect), replayed to the app as it came."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (close())
        self.size = 0
        self.disconnected = False

    async def read(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            self.size += self.file.write(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def replay(self, receive: Receive) -> Receive:
        """`receive` for the app: the body again, then the connection's own messages (a disconnect)."""
        self.file.seek(0)
        done = False

        async def replayed() -> Message:
            nonlocal done
            if done:
                return await receive()
            chunk = self.file.read(REPLAY_CHUNK)
            done = self.file.tell() >= self.size
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return replayed

    def close(self) -> None:
        self.file.close()


class WorkAdmission:
    """The slots are a count and a queue of futures, not an `asyncio.Semaphore`: a semaphore binds to the
    first event loop that waits on it, and an app may outlive a loop (tests, a server restart)."""

    def __init__(
        self, app: ASGIApp, running: int, waiting: int, reading: int, time_limit_s: float, metrics: Metrics
    ) -> None:
        self.app, self.running, self.waiting, self.reading, self.time_limit_s, self.metrics = (
            app, running, waiting, reading, time_limit_s, metrics,
        )  # fmt: skip
        self._busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._bodies: Counter[str] = Counter()  # bodies being read, by caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_work(scope):
            await self.app(scope, receive, send)
            return
        if self._full():
            await self._refuse(scope, receive, send)
            return
        caller = caller_of(scope)
        if self._bodies[caller] >= self.reading:
            detail = f"{self.reading} of your request bodies are already arriving (CALIPER_MAX_READING_PER_CALLER)"
            await self._refuse(scope, receive, send, detail)
            return
        body = BufferedBody()
        try:
            self._bodies[caller] += 1
            try:
                await body.read(receive)
            finally:
                self._bodies[caller] -= 1
                if not self._bodies[caller]:
                    del self._bodies[caller]
            if body.disconnected:
                return  # nobody to answer
            if self._full():
                await self._refuse(scope, receive, send)
                return
            await self._acquire()
            try:
                with time_limit(self.time_limit_s):
                    await self.app(scope, body.replay(receive), send)
            finally:
                self._release()
        finally:
            body.close()

    def _full(self) -> bool:
        return self._busy >= self.running and len(self._queue) >= self.waiting

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, detail: str | None = None) -> None:
        """503 `overloaded` with Retry-After: the slots and the queue are full (or `detail` says why)."""
        self.metrics.refusals.labels("overloaded").inc()
        detail = detail or (
            f"the server is at capacity ({self.running} requests running, {self.waiting} waiting: "
            "CALIPER_MAX_RUNNING_WORK, CALIPER_MAX_WAITING_WORK); retry after Retry-After"
        )
        response = refusal(scope["path"], 503, detail, {"Retry-After": RETRY_AFTER_S}, kind="overloaded")
        await response(scope, receive, send)

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

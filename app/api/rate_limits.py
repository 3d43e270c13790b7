"""Per-key rate limits (issue "Trust"): each API key (or, with auth disabled, each client address) may
make CALIPER_RATE_LIMIT requests (`limits` notation, e.g. `100/second;2000/minute`); beyond that 429 with
`Retry-After`. Counted by `limits`' sliding-window counter in this process's memory (~6 µs a request,
measured), so with `--workers N` each process counts on its own: a key gets up to N times the limit."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many, storage, strategies
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.auth import PROTECTED
from app.api.problems import refusal
from app.metrics import Metrics
from app.storage.keys import Principal


class RateLimits:
    """Inside `Authentication`, which leaves the caller's principal in the scope."""

    def __init__(self, app: ASGIApp, limit: str, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.items: list[RateLimitItem] = parse_many(limit) if limit.strip() else []
        self.limiter = strategies.SlidingWindowCounterRateLimiter(storage.MemoryStorage())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.items or scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        caller = caller_of(scope)
        for item in self.items:
            if not self.limiter.hit(item, caller):
                reset = self.limiter.get_window_stats(item, caller).reset_time
                wait = str(max(1, math.ceil(reset - time.time())))
                self.metrics.refusals.labels("rate-limit").inc()
                detail = f"rate limit of {item} exceeded for this key (CALIPER_RATE_LIMIT); retry in {wait} s"
                await refusal(scope["path"], 429, detail, {"Retry-After": wait})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def caller_of(scope: Scope) -> str:
    """Who is calling, for per-caller limits: the API key, else the client's address."""
    principal: Principal | None = scope.get("caliper.principal")
    if principal is not None and principal.key_id is not None:
        return f"key:{principal.key_id}"
    client = scope.get("client")
    return f"address:{client[0] if client else '-'}"

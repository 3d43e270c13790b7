"""A cooperative time limit on the expensive work of one request (fits, cross-validation, bootstrap,
chunked evaluations, model runs). The service opens a `time_limit`; every onnxruntime run made through
`SessionCache` sessions, every bootstrap block and every model-worker call checks it first, so work over
its budget stops at the next chunk or optimiser step, before anything is stored. A context variable,
so it follows the request into the thread it runs in and never touches another request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("caliper_deadline", default=None)


class TimeLimitError(RuntimeError):
    """The work of this request ran past its time limit."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"the work of this request ran past its time limit of {limit_s:g} s and was stopped; nothing was "
            "stored (send fewer rows or a cheaper method, or raise CALIPER_REQUEST_TIMEOUT_S)"
        )
        self.limit_s = limit_s


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Work checked inside this block stops with `TimeLimitError` once `seconds` have passed."""
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check() -> None:
    """Raise `TimeLimitError` when the time limit in scope (if any) has passed."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise TimeLimitError(deadline[1])

"""Cooperative stops of the expensive work of one request or job (fits, cross-validation, bootstrap,
chunked evaluations, model runs): a time limit, and a job's cancellation. The service opens a
`time_limit` (a job also `cancellable`); every onnxruntime run made through `SessionCache` sessions,
every chunk of a fold, every bootstrap block and every model-worker call checks them first, so the work
stops at the next chunk or optimiser step, before anything is stored. Context variables, so they follow
the work into the thread it runs in and never touch another request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("caliper_deadline", default=None)
_CANCELLED: ContextVar[threading.Event | None] = ContextVar("caliper_cancelled", default=None)


class CancelledError(RuntimeError):
    """The job doing this work was cancelled."""

    def __init__(self) -> None:
        super().__init__("the job was cancelled; nothing of it was stored")


class TimeLimitError(RuntimeError):
    """The work of this request ran past its time limit."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"the work of this request ran past its time limit of {limit_s:g} s and was stopped; nothing was "
            "stored (send fewer rows or a cheaper method, or raise CALIPER_REQUEST_TIMEOUT_S)"
        )
        self.limit_s = limit_s


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Work checked inside this block stops with `TimeLimitError` once `seconds` have passed (None: no
    limit, also where an enclosing block set one)."""
    token = _DEADLINE.set(None if seconds is None else (time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


@contextmanager
def cancellable(cancelled: threading.Event) -> Iterator[None]:
    """Work checked inside this block stops with `CancelledError` once `cancelled` is set."""
    token = _CANCELLED.set(cancelled)
    try:
        yield
    finally:
        _CANCELLED.reset(token)


def check() -> None:
    """Raise `CancelledError` when the job in scope was cancelled, `TimeLimitError` when the time limit in
    scope (if any) has passed."""
    cancelled = _CANCELLED.get()
    if cancelled is not None and cancelled.is_set():
        raise CancelledError()
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise TimeLimitError(deadline[1])

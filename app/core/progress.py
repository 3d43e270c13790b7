"""How far the work of a job has come: each pass over rows reports (rows done, rows in all, "rows") after
every chunk, a bootstrap (resamples done, resamples, "resamples") after every block, and the job in
scope, if any, keeps it. A context variable, so it follows the work into the
thread it runs in; outside a job a report is dropped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Reporter = Callable[[int, int, str], None]
_REPORTER: ContextVar[Reporter | None] = ContextVar("caliper_progress", default=None)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Reports made inside this block go to `reporter(done, total, unit)`."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


def report(done: int, total: int, unit: str = "rows") -> None:
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(done, total, unit)

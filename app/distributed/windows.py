"""Work over a file source on Dask, split into windows: each window a whole number of the chunks a
single process would read (so every chunk's state is the same one), one task per window on a worker that
reads its own shards (only the window's description — paths, offsets — travels to it), the answers
collected in row order. Progress is the rows of the finished windows; a cancelled or timed-out job
cancels its tasks (`deadline.check` between waits), and every window's answer leaves the workers as soon
as it is gathered; a task whose worker dies is retried by Dask (`retries`), which is safe because a
window's task is a pure function of its files. Mergeable states are
merged by a fixed pairwise tree, so the result does not depend on which task finished first."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from app.core import deadline, progress
from app.core.fold import Chunk, Mergeable, Source, merged_fold
from app.sources.source import FileSource

T = TypeVar("T")
M = TypeVar("M", bound=Mergeable)
WINDOWS_PER_WORKER = 4
RETRIES = 2


def windows(rows: int, step: int, workers: int) -> list[tuple[int, int]]:
    """About WINDOWS_PER_WORKER windows per worker, each a whole number of `step`-row chunks."""
    chunks = math.ceil(rows / step)
    per_window = max(1, math.ceil(chunks / (WINDOWS_PER_WORKER * workers))) * step
    return [(start, min(start + per_window, rows)) for start in range(0, rows, per_window)]


def run_windows(client: Any, source: FileSource, task: Callable[..., T], *args: Any) -> list[T]:
    """`task(window, start, *args)` for each window of `source` on `client`'s workers; the answers in row
    order."""
    from distributed import wait

    step = source.chunking.step(source.row_bytes)
    workers = max(1, len(client.scheduler_info()["workers"]))
    spans = windows(source.rows, step, workers)
    futures = [client.submit(task, source.window(a, b), a, *args, retries=RETRIES, pure=False) for a, b in spans]
    rows_of = {future.key: b - a for future, (a, b) in zip(futures, spans, strict=True)}
    pending, done = set(futures), 0
    try:
        while pending:
            deadline.check()  # a cancelled or timed-out job stops here, and its tasks with it
            try:
                finished, pending = wait(pending, timeout=0.25, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for future in finished:
                if future.status == "error":
                    future.result()  # raises the window's error (a finished one's result crosses once, below)
            done += sum(rows_of[f.key] for f in finished)
            progress.report(done, source.rows)
        answers: list[T] = client.gather(futures)
        return answers
    finally:  # the unfinished stop, the finished leave the workers' memory now rather than when collected
        client.cancel(futures)


def merged(states: list[M]) -> M:
    """Adjacent states merged pairwise, level by level, left before right: a fixed order, whichever task
    finished first."""
    while len(states) > 1:
        states = [
            states[k].merge(states[k + 1]) if k + 1 < len(states) else states[k] for k in range(0, len(states), 2)
        ]
    return states[0]


def _window_state(window: FileSource, start: int, step: Callable[[Chunk], M]) -> M:
    return merged_fold(window, step)


def gather_on(client: Any) -> Callable[[Source, Callable[[Chunk], M]], M]:
    """A `Gather` (`app.core.fold`) whose chunk states are computed and merged per window on `client`'s
    workers, then merged here: what `merged_fold` gives in one process, up to the merge tree's rounding."""

    def gather(source: Source, step: Callable[[Chunk], M]) -> M:
        if not isinstance(source, FileSource):
            raise TypeError("a cluster reads only file sources")
        states: list[M] = run_windows(client, source, _window_state, step)
        return merged(states)

    return gather

"""An evaluation from files on Dask: the source's rows split into windows (each a whole number of the
chunks a single process would read, so the chunk states are the same ones), one task per window running
the same fold (`StreamedEvaluation` over `FileSource.window`) on a worker, which reads its own shards;
the tasks' states merged in row order by a fixed pairwise tree, then finalized once here. What crosses
the network per task: the request and the window's description (paths, offsets) one way; its state (sums:
kilobytes) and, for a stored evaluation, its per-row columns the other. Progress is the rows of the
finished windows; a cancelled or timed-out job cancels its tasks; a task whose worker dies is retried by
Dask (`retries`), which is safe because a window's task is a pure function of its files."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.core import deadline, progress
from app.core.evaluation import Evaluated, EvaluationPlan, EvaluationState, Evaluator
from app.core.fold import Assembled, Chunk, Stage, fold
from app.core.runtime import RuntimeConfig, SessionCache
from app.core.slices import Slices
from app.evaluation.schemas import EvaluationRequest
from app.evaluation.streamed import Seen, StreamedEvaluation
from app.sources.source import FileSource

KEPT = ("labels", "targets", "sample_weight")  # read from files and kept whole (fingerprint, stored rows)
WINDOWS_PER_WORKER = 4
RETRIES = 2
_RUNTIMES: dict[tuple[str, int], SessionCache] = {}  # one onnxruntime session cache per worker process


@dataclass(frozen=True)
class Part:
    """What a worker answers for its window: the fold's state, per-row outputs and kept columns."""

    start: int
    stop: int
    state: EvaluationState
    per_row: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]
    plan: EvaluationPlan
    seen: Seen


def windows(rows: int, step: int, workers: int) -> list[tuple[int, int]]:
    """About WINDOWS_PER_WORKER windows per worker, each a whole number of `step`-row chunks."""
    chunks = math.ceil(rows / step)
    per_window = max(1, math.ceil(chunks / (WINDOWS_PER_WORKER * workers))) * step
    return [(start, min(start + per_window, rows)) for start in range(0, rows, per_window)]


def read_fields(source: FileSource) -> Callable[[Chunk], dict[str, np.ndarray]]:
    """A chunk's predictions and targets as the files give them (the evaluation's `read`)."""
    fields = tuple(source.columns)
    return lambda chunk: {name: chunk[name] for name in fields}


def kept_stage(source: FileSource) -> dict[str, Stage[Any, Any]]:
    """The stage that keeps the labels, targets and weights read from files whole (none if none are)."""
    kept = [name for name in KEPT if name in source.columns]
    if not kept:
        return {}
    return {"kept": Assembled(lambda chunk: {name: chunk[name] for name in kept}, source.rows)}


def evaluate_window(request: EvaluationRequest, window: FileSource, slices: Slices | None, start: int) -> Part:
    """On a worker: the fold over one window (rows numbered from 0 within it; `start` is where it lies)."""
    config = RuntimeConfig(
        intra_op_threads=1, chunking=window.chunking
    )  # a worker thread per core: no oversubscription
    runtime = _RUNTIMES.setdefault((config.provider, config.intra_op_threads), SessionCache(config))
    streamed = StreamedEvaluation(request, read_fields(window), window.inline, window.rows, slices, runtime)
    folded = fold(window, {"evaluation": streamed, **kept_stage(window)})
    evaluated: Evaluated = folded["evaluation"]
    assert streamed.seen is not None
    return Part(start, start + window.rows, evaluated.state, evaluated.per_row, folded.get("kept", {}),
                streamed.evaluator.plan, streamed.seen)  # fmt: skip


def merged(states: list[EvaluationState]) -> EvaluationState:
    """Adjacent states merged pairwise, level by level, left before right: a fixed order, whichever task
    finished first."""
    while len(states) > 1:
        states = [
            states[k].merge(states[k + 1]) if k + 1 < len(states) else states[k] for k in range(0, len(states), 2)
        ]
    return states[0]


@dataclass(frozen=True)
class DistributedResult:
    """The merged and finalized evaluation, with what the first window showed and the kept columns."""

    evaluated: Evaluated
    plan: EvaluationPlan
    seen: Seen
    kept: dict[str, np.ndarray]


def evaluate_on(
    client: Any, request: EvaluationRequest, source: FileSource, slices: Slices | None
) -> DistributedResult:
    """The evaluation of `source` by `client`'s workers, merged and finalized here."""
    from distributed import wait

    step = source.chunking.step(source.row_bytes)
    workers = max(1, len(client.scheduler_info()["workers"]))
    stub = None if slices is None else replace(slices, slots=np.empty((0, len(slices.keys)), np.int64))
    spans = windows(source.rows, step, workers)
    futures = [
        client.submit(evaluate_window, request, source.window(a, b), stub, a, retries=RETRIES, pure=False)
        for a, b in spans
    ]
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
        parts: list[Part] = client.gather(futures)
    finally:
        client.cancel([f for f in futures if not f.done()])
    state = merged([p.state for p in parts])
    plan, seen = parts[0].plan, parts[0].seen
    per_row = {name: np.concatenate([p.per_row[name] for p in parts]) for name in parts[0].per_row}
    kept = {name: np.concatenate([p.kept[name] for p in parts]) for name in parts[0].kept}
    slot_count = 0 if slices is None else slices.slot_count
    result = Evaluator(plan).finalize(state, seen.classes, slot_count)
    return DistributedResult(Evaluated(state, result, per_row), plan, seen, kept)

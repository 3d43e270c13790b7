"""An evaluation from files on Dask (`app.distributed.windows`): each window's task runs the same fold
(`StreamedEvaluation` over `FileSource.window`, or over an uploaded model's `ModelChunks` of it) on a
worker; the tasks' states are merged in row order by the fixed pairwise tree, then finalized once here.
What crosses the network per task: the request and the window's description one way (for a model, its
path in the artifact store, not its bytes); its state (sums: kilobytes) and, for a stored evaluation, its
per-row columns the other."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from app.core.chunking import Chunking
from app.core.evaluation import Evaluated, EvaluationPlan, EvaluationState, Evaluator
from app.core.fold import Assembled, Chunk, Source, Stage, fold
from app.core.runtime import RuntimeConfig, SessionCache
from app.core.slices import Slices
from app.distributed.windows import merged, run_windows
from app.evaluation.schemas import EvaluationRequest
from app.evaluation.streamed import Seen, StreamedEvaluation
from app.models.runner import INPUTS, ModelChunks, ModelFile, read_logits, validated_inputs
from app.models.workers import WorkerLimits, WorkerPool, WorkerUnavailableError
from app.sources.source import FileSource

KEPT = ("labels", "targets", "sample_weight")  # read from files and kept whole (fingerprint, stored rows)
_RUNTIMES: dict[tuple[str, int], SessionCache] = {}  # one onnxruntime session cache per worker process
_POOLS: dict[WorkerLimits, WorkerPool] = {}  # the model processes of this worker process


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


def read_fields(source: FileSource) -> Callable[[Chunk], dict[str, np.ndarray]]:
    """A chunk's predictions and targets as the files give them (the evaluation's `read`)."""
    fields = tuple(source.columns)
    return lambda chunk: {name: chunk[name] for name in fields}


def model_logits(model: ModelFile, chunk: Chunk) -> dict[str, np.ndarray]:
    """A chunk's logits as Caliper reads the model's output (the evaluation's `read` of a model)."""
    return {"logits": read_logits(model, chunk[model.logits_output])}


def model_processes(limits: WorkerLimits) -> WorkerPool:
    """This Dask worker's model process (one: a Dask worker runs one task at a time per thread), started
    on first use. A daemonic Dask worker cannot start one."""
    if multiprocessing.current_process().daemon:
        raise WorkerUnavailableError(
            "the Dask worker runs as a daemon process, which cannot start the sandboxed model process: start the "
            "workers with DASK_DISTRIBUTED__WORKER__DAEMON=False"
        )
    if limits not in _POOLS:
        _POOLS[limits] = WorkerPool(1, limits)
    return _POOLS[limits]


def kept_stage(source: FileSource) -> dict[str, Stage[Any, Any]]:
    """The stage that keeps the labels, targets and weights read from files whole (none if none are)."""
    kept = [name for name in KEPT if name in source.columns]
    if not kept:
        return {}
    return {"kept": Assembled(lambda chunk: {name: chunk[name] for name in kept}, source.rows)}


def evaluate_window(
    window: FileSource,
    start: int,
    request: EvaluationRequest,
    slices: Slices | None,
    model: ModelFile | None = None,
    chunking: Chunking | None = None,
) -> Part:
    """On a worker: the fold over one window (rows numbered from 0 within it; `start` is where it lies).
    With `model`, the window's `inputs.<name>` run through the uploaded model first, in model processes
    this worker starts under the server's limits, a model batch per chunk; `chunking`: the evaluator's."""
    config = RuntimeConfig(intra_op_threads=1, chunking=chunking or window.chunking)  # a thread per core
    runtime = _RUNTIMES.setdefault((config.provider, config.intra_op_threads), SessionCache(config))
    rows: Source = window
    read, beside = read_fields(window), tuple(window.inline)
    if model is not None:
        rows = ModelChunks(model.caller(model_processes(model.limits)), model, window, [model.logits_output],
                           partial(validated_inputs, model))  # fmt: skip
        read = partial(model_logits, model)
        beside = tuple(k for k in (*window.columns, *window.inline) if not k.startswith(INPUTS))
    streamed = StreamedEvaluation(request, read, beside, window.rows, slices, runtime)
    folded = fold(rows, {"evaluation": streamed, **kept_stage(window)})
    evaluated: Evaluated = folded["evaluation"]
    assert streamed.seen is not None
    return Part(start, start + window.rows, evaluated.state, evaluated.per_row, folded.get("kept", {}),
                streamed.evaluator.plan, streamed.seen)  # fmt: skip


@dataclass(frozen=True)
class DistributedResult:
    """The merged and finalized evaluation, with what the first window showed and the kept columns."""

    evaluated: Evaluated
    plan: EvaluationPlan
    seen: Seen
    kept: dict[str, np.ndarray]


def evaluate_on(
    client: Any,
    request: EvaluationRequest,
    source: FileSource,
    slices: Slices | None,
    model: ModelFile | None = None,
    chunking: Chunking | None = None,
) -> DistributedResult:
    """The evaluation of `source` (with `model`: of the model's outputs for its inputs) by `client`'s
    workers, merged and finalized here."""
    stub = None if slices is None else replace(slices, slots=np.empty((0, len(slices.keys)), np.int64))
    parts: list[Part] = run_windows(client, source, evaluate_window, request, stub, model, chunking)
    state = merged([p.state for p in parts])
    plan, seen = parts[0].plan, parts[0].seen
    per_row = {name: np.concatenate([p.per_row[name] for p in parts]) for name in parts[0].per_row}
    kept = {name: np.concatenate([p.kept[name] for p in parts]) for name in parts[0].kept}
    slot_count = 0 if slices is None else slices.slot_count
    result = Evaluator(plan).finalize(state, seen.classes, slot_count)
    return DistributedResult(Evaluated(state, result, per_row), plan, seen, kept)

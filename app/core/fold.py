"""One chunk fold: every pass over rows is `fold(source, stages)`.

A source yields the rows in order as chunks (equal-length arrays by name, with their row span); a stage
turns one chunk into a state (`update`), combines the states of two adjacent row ranges (`merge`, left
then right) and turns the state of all rows into its result (`finalize`) — torchmetrics' update /
merge / compute, with the merge order fixed. A stage whose merge is exact (sums in float64, rows in
order) gives one result however the rows are chunked, and a distributed run that merges its partial
states in row order gives it too. The sources here read arrays in memory; the model runner's source
(`app.models.runner.ModelChunks`) yields a model's outputs chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from app.core import deadline, progress
from app.core.chunking import Chunking

S = TypeVar("S")
R = TypeVar("R", covariant=True)
M = TypeVar("M", bound="Mergeable")
Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of a source: its arrays by name, each with stop - start rows."""

    start: int
    stop: int
    arrays: Arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


class Source(Protocol):
    """Rows in order, chunk by chunk; `rows` is their number."""

    @property
    def rows(self) -> int: ...

    def chunks(self) -> Iterable[Chunk]: ...


class Stage(Protocol[S, R]):
    """update (one chunk's state), merge (two adjacent ranges, left then right), finalize (the result)."""

    def update(self, chunk: Chunk) -> S: ...

    def merge(self, left: S, right: S) -> S: ...

    def finalize(self, state: S) -> R: ...


@dataclass(frozen=True)
class InMemory:
    """Arrays of equal length sliced along axis 0 into the chunking's spans. `row_bytes` (default: the
    arrays' bytes per row) sizes the chunks when a row's intermediates are larger than its inputs."""

    arrays: Arrays
    chunking: Chunking
    row_bytes: int | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values())))

    def beside(self, arrays: Arrays) -> InMemory:
        """The same rows with more arrays of them."""
        return replace(self, arrays={**self.arrays, **arrays})

    def chunks(self) -> Iterator[Chunk]:
        n = self.rows
        width = self.row_bytes or (sum(int(a[0].nbytes) for a in self.arrays.values()) if n else 1)
        for start, stop in self.chunking.spans(n, width):
            yield Chunk(start, stop, {k: v[start:stop] for k, v in self.arrays.items()})


def fold(source: Source, stages: Mapping[str, Stage[Any, Any]]) -> dict[str, Any]:
    """Every stage over every chunk of `source`, states merged in row order; {stage name: result}.
    The request's time limit and a job's cancellation are checked before each chunk, and a job's
    progress reported after it. A source without rows is refused by its caller (a stage has no state
    to finalize)."""
    states: dict[str, Any] = {}
    for chunk in source.chunks():
        deadline.check()
        for name, stage in stages.items():
            part = stage.update(chunk)
            states[name] = stage.merge(states[name], part) if name in states else part
        progress.report(chunk.stop, source.rows)
    if len(states) != len(stages):
        raise ValueError("a fold needs at least one row")
    return {name: stage.finalize(states[name]) for name, stage in stages.items()}


@dataclass(frozen=True)
class Summed:
    """Outputs that are sums over rows (`step` of each chunk), added in float64."""

    step: Callable[[Chunk], Arrays]

    def update(self, chunk: Chunk) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float64) for k, v in self.step(chunk).items()}

    def merge(self, left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: left[k] + right[k] for k in left}

    def finalize(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return state


class Mergeable(Protocol):
    """A state that merges with the state of the rows after it (EvaluationState, GaussianStats)."""

    def merge(self: M, other: M) -> M: ...


@dataclass(frozen=True)
class Merged(Generic[M]):
    """States of their own kind (`step` of each chunk) merged by their `merge`; the result is the state."""

    step: Callable[[Chunk], M]

    def update(self, chunk: Chunk) -> M:
        return self.step(chunk)

    def merge(self, left: M, right: M) -> M:
        return left.merge(right)

    def finalize(self, state: M) -> M:
        return state


@dataclass(frozen=True)
class Total:
    """A float64 sum as a mergeable state (e.g. a second pass's moment)."""

    value: float

    def merge(self, other: Total) -> Total:
        return Total(self.value + other.value)


Gather = Callable[[Source, Callable[[Chunk], M]], M]  # a source's per-chunk states merged into one


def merged_fold(source: Source, step: Callable[[Chunk], M]) -> M:
    """`step`'s states of every chunk of `source`, merged in row order here (a `Gather`; on a Dask cluster,
    `app.distributed.windows.gather_on` merges the same states from its workers)."""
    merged: M = fold(source, {"state": Merged(step)})["state"]
    return merged


@dataclass(frozen=True)
class Span:
    """The state of `Assembled`: the rows [start, stop) written so far."""

    start: int
    stop: int


@dataclass
class Assembled:
    """Per-row outputs (`step` of each chunk, each of the chunk's rows) assembled in row order into arrays
    allocated once for the source's `rows` (`dtypes` overrides an output's dtype, e.g. class indices in
    the smallest that holds them): peak memory is the result plus one chunk. The arrays live on the
    stage, so a stage serves one fold; merge checks that the two ranges are adjacent."""

    step: Callable[[Chunk], Arrays]
    rows: int
    dtypes: Mapping[str, np.dtype] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, init=False)

    def update(self, chunk: Chunk) -> Span:
        for name, value in self.step(chunk).items():
            if name not in self.arrays:
                dtype = self.dtypes.get(name, value.dtype)
                self.arrays[name] = np.empty((self.rows, *value.shape[1:]), dtype)
            self.arrays[name][chunk.start : chunk.stop] = value
        return Span(chunk.start, chunk.stop)

    def merge(self, left: Span, right: Span) -> Span:
        if left.stop != right.start:
            raise ValueError(f"rows [{left.start}, {left.stop}) and [{right.start}, {right.stop}) are not adjacent")
        return Span(left.start, right.stop)

    def finalize(self, state: Span) -> dict[str, np.ndarray]:
        if (state.start, state.stop) != (0, self.rows):
            raise ValueError(f"rows [{state.start}, {state.stop}) of {self.rows} were assembled")
        return self.arrays

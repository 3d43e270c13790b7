"""The one chunk fold (`app.core.fold`): any chunking gives one result, states merge in row order, a
stage refuses what it cannot merge exactly, and the request's time limit stops a fold between chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import deadline
from app.core.chunking import Chunking
from app.core.fold import Assembled, Chunk, InMemory, Merged, Span, Summed, fold
from app.core.mahalanobis import GaussianStats


def rows(n: int, dtype: type = np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {"x": rng.normal(size=(n, 3)).astype(dtype), "y": rng.integers(0, 4, size=n)}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), step=st.integers(1, 64), dtype=st.sampled_from([np.float32, np.float64]))
def test_any_chunking_gives_the_one_shot_result(n: int, step: int, dtype: type) -> None:
    arrays = rows(n, dtype)
    stages = {
        "sums": Summed(lambda c: {"x": c["x"].astype(np.float64).sum(0), "count": np.asarray(len(c["x"]))}),
        "rows": Assembled(lambda c: {"square": c["x"] ** 2, "y": c["y"]}, n, {"y": np.dtype(np.uint8)}),
    }
    out = fold(InMemory(arrays, Chunking(rows=step)), stages)
    x64 = arrays["x"].astype(np.float64)
    # a sum of chunk sums differs from one sum by rounding only: bound it by n·eps·Σ|x|
    bound = n * np.finfo(np.float64).eps * np.abs(x64).sum(0)
    assert np.all(np.abs(out["sums"]["x"] - x64.sum(0)) <= bound)
    assert out["sums"]["count"] == n
    np.testing.assert_array_equal(out["rows"]["square"], arrays["x"] ** 2)
    assert out["rows"]["square"].dtype == dtype
    assert out["rows"]["y"].dtype == np.uint8
    np.testing.assert_array_equal(out["rows"]["y"], arrays["y"])


def test_chunks_follow_the_chunking_and_the_row_bytes() -> None:
    arrays = rows(10)
    spans = [(c.start, c.stop) for c in InMemory(arrays, Chunking(rows=4)).chunks()]
    assert spans == [(0, 4), (4, 8), (8, 10)]
    by_bytes = [(c.start, c.stop) for c in InMemory(arrays, Chunking(bytes=48), row_bytes=16).chunks()]
    assert by_bytes == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [len(c["x"]) for c in InMemory(arrays, Chunking.blocks_of(7), row_bytes=1 << 40).chunks()] == [7, 3]


@dataclass
class Recorder:
    """A stage whose state is the list of chunk starts, recording each merge's (left, right)."""

    merges: list[tuple[list[int], list[int]]] = field(default_factory=list)

    def update(self, chunk: Chunk) -> list[int]:
        return [chunk.start]

    def merge(self, left: list[int], right: list[int]) -> list[int]:
        self.merges.append((left, right))
        return left + right

    def finalize(self, state: list[int]) -> list[int]:
        return state


def test_states_merge_left_to_right_in_row_order() -> None:
    recorder = Recorder()
    assert fold(InMemory(rows(10), Chunking(rows=3)), {"order": recorder})["order"] == [0, 3, 6, 9]
    assert recorder.merges == [([0], [3]), ([0, 3], [6]), ([0, 3, 6], [9])]


def test_assembled_refuses_ranges_that_are_not_adjacent_or_not_whole() -> None:
    stage = Assembled(lambda c: c.arrays, 10)
    with pytest.raises(ValueError, match="not adjacent"):
        stage.merge(Span(0, 3), Span(4, 6))
    with pytest.raises(ValueError, match=r"rows \[0, 6\) of 10"):
        stage.finalize(Span(0, 6))


def test_merged_states_equal_the_one_shot_statistics() -> None:
    arrays = rows(200)

    def stats(chunk: Chunk) -> GaussianStats:
        return GaussianStats.of(chunk["x"], chunk["y"], 4, per_class=True)

    chunked = fold(InMemory(arrays, Chunking(rows=17)), {"stats": Merged(stats)})["stats"]
    whole = GaussianStats.of(arrays["x"], arrays["y"], 4, per_class=True)
    assert chunked.n == whole.n == 200
    for name in ("mean", "scatter", "class_counts", "class_sums", "class_scatter"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-12, atol=1e-12)


def test_a_fold_without_rows_is_refused() -> None:
    empty = {"x": np.zeros((0, 3))}
    with pytest.raises(ValueError, match="at least one row"):
        fold(InMemory(empty, Chunking()), {"sums": Summed(lambda c: {"x": c["x"].sum(0)})})


def test_the_time_limit_stops_a_fold_between_chunks() -> None:
    seen: list[int] = []

    def step(chunk: Chunk) -> dict[str, np.ndarray]:
        seen.append(chunk.start)
        return {"x": chunk["x"].sum(0)}

    with deadline.time_limit(0.0), pytest.raises(deadline.TimeLimitError):
        fold(InMemory(rows(10), Chunking(rows=2)), {"sums": Summed(step)})
    assert seen == []  # checked before the first chunk's work

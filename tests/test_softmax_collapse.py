"""softmax_collapse follows api.md's exact float64 rule row by row, on every CPU: rows a relative 1e-4 on
either side of each threshold (S = 2⁻²⁴ and m − min z = 150·ln 2), in both dtypes, and a count that is
invariant to adding a constant to a row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.core.chunking import Chunking
from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
from tests import oracle
from tests.test_core_golden import METRIC, evaluate

SUM_LIMIT = 2.0**-24
SPREAD_LIMIT = 150 * math.log(2)
MARGIN = 1e-4  # relative; float32 rounding of a logit near 17 or 104 moves S or the spread by < 1e-6


def _sum_row(relative: float) -> list[float]:
    """[0, a, a] with S = 2·e^a = relative · 2⁻²⁴ (spread |a| ≈ 17.3, far below the spread limit)."""
    a = math.log(relative * SUM_LIMIT / 2)
    return [0.0, a, a]


def _spread_row(relative: float) -> list[float]:
    """[0.5, 0, 0.5 − relative · 150 ln 2]: S ≈ 0.6, so only the spread rule can collapse it."""
    return [0.5, 0.0, 0.5 - relative * SPREAD_LIMIT]


ROWS = [
    (_sum_row(1 - MARGIN), True),
    (_sum_row(1 + MARGIN), False),
    (_spread_row(1 + MARGIN), True),
    (_spread_row(1 - MARGIN), False),
    ([3.0, 3.0, -10.0], False),  # a tie at the top: the other maximum alone gives S ≥ 1
    ([0.0, -20.0, -30.0], True),
]


def _collapse(dtype: type, **arrays: np.ndarray) -> float:
    batch = validate_batch(labels=np.zeros(len(next(iter(arrays.values()))), np.int64), **arrays)
    evaluator = Evaluator(EvaluationPlan(batch.layout, (), (METRIC.validate_python({"name": "softmax_collapse"}),)))
    return evaluator.evaluate(batch, Chunking(rows=7)).result.metrics["softmax_collapse"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("row", "collapsed"), ROWS)
def test_each_threshold_from_both_sides(row: list[float], collapsed: bool, dtype: type) -> None:
    z = np.array([row], dtype)
    assert oracle.collapse_margin(z.astype(np.float64)) > MARGIN / 2  # float32 rounding kept it off the edge
    assert oracle.collapsed_rows(z.astype(np.float64))[0] == collapsed  # the row is what its name says
    assert _collapse(dtype, logits=z) == float(collapsed)


@pytest.mark.parametrize(("row", "collapsed"), ROWS)
def test_probabilities_are_judged_by_their_logs(row: list[float], collapsed: bool) -> None:
    z = np.array([row])
    p = np.exp(z - np.log(np.exp(z).sum()))  # float64 keeps every one of these rows representable
    assert _collapse(np.float64, probabilities=p) == float(collapsed)


def test_zero_probability_collapses_in_float32() -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]], np.float32)
    assert _collapse(np.float32, probabilities=p) == 0.5


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12), elements=st.integers(-1600, 1600)),
    st.sampled_from([np.float32, np.float64]),
    st.data(),
)
def test_count_is_invariant_to_adding_a_constant(grid: np.ndarray, dtype: type, data: st.DataObject) -> None:
    """Logits on a 1/8 grid and integer shifts: every sum is exact in float32, so the shifted rows have the
    same differences z_j − m bit for bit and the count must not move at all."""
    assume(grid.shape[1] >= 2)
    z = grid / 8.0
    shift = np.array(data.draw(st.lists(st.integers(-100, 100), min_size=len(z), max_size=len(z))), float)[:, None]
    base = _collapse(dtype, logits=z.astype(dtype))
    assert _collapse(dtype, logits=(z + shift).astype(dtype)) == base
    assume(oracle.collapse_margin(z) > 1e-9)  # and it is the oracle's count, off the thresholds
    assert base == pytest.approx(float(np.mean(oracle.collapsed_rows(z))), rel=1e-12)


def test_mixed_rows_in_chunks_match_the_oracle() -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(size=(500, 9)) * rng.choice([1.0, 8.0, 30.0], size=(500, 1))
    result, _ = evaluate(z, rng.integers(0, 9, 500), [], [{"name": "softmax_collapse"}], chunk=37)
    expected = float(np.mean(oracle.collapsed_rows(z)))
    assert 0.05 < expected < 0.95  # the data has rows on both sides
    assert oracle.collapse_margin(z) > 1e-9
    assert result.metrics["softmax_collapse"] == pytest.approx(expected, rel=1e-12)

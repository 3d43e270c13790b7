"""Invariances of the core, checked with hypothesis on random inputs."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.core.chunking import Chunking
from app.core.evaluation import EvaluationPlan, EvaluationState, Evaluator, IncompatibleStateError, validate_batch
from tests import oracle
from tests.test_core_golden import LOSS, METRIC, evaluate

SHIFT_INVARIANT_LOSSES: list[dict[str, Any]] = [
    {"name": "cross_entropy", "label_smoothing": 0.1},
    {"name": "nll"},
    {"name": "brier"},
    {"name": "focal"},
    {"name": "z_loss", "a": 1.0, "b": 1.0},
    {"name": "ldr_kl"},
    {"name": "aldr_kl"},
    {"name": "comp_sum", "tau": 1.5},
    {"name": "gce"},
    {"name": "mae"},
    {"name": "sum_exp"},
    {"name": "dice"},
    {"name": "hinge_crammer_singer"},
    {"name": "hinge_weston_watkins"},
    {"name": "kd"},
    {"name": "nkd"},
]
ALL_METRICS: list[dict[str, Any]] = [
    {"name": "accuracy"},
    {"name": "top_k_accuracy", "k": 2},
    {"name": "nll"},
    {"name": "brier"},
    {"name": "ece"},
    {"name": "ece", "binning": "quantile", "bins": 4, "key": "ece_q"},
    {"name": "mce"},
    {"name": "classwise_ece"},
    {"name": "smooth_ece"},
    {"name": "entropy"},
    {"name": "aurc"},
    {"name": "softmax_collapse"},
]
ORDER_FREE_METRICS = [m for m in ALL_METRICS if m.get("binning") != "quantile" and m["name"] not in ("aurc",)]


@st.composite
def problems(draw: st.DrawFn, max_rows: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c)) * scale, rng.integers(0, c, n), rng.normal(size=(n, c))


@settings(max_examples=40, deadline=None)
@given(problems(), st.floats(-50, 50))
def test_softmax_losses_are_shift_invariant(problem: tuple[np.ndarray, ...], shift: float) -> None:
    z, y, zt = problem
    assume(oracle.off_discontinuities(z, {15}).all())  # the shift moves probabilities by rounding only
    base, _ = evaluate(z, y, SHIFT_INVARIANT_LOSSES, ALL_METRICS, teacher_logits=zt)
    shifted, _ = evaluate(z + shift, y, SHIFT_INVARIANT_LOSSES, ALL_METRICS, teacher_logits=zt + shift)
    for group in ("losses", "metrics"):
        for key, value in getattr(base, group).items():
            np.testing.assert_allclose(getattr(shifted, group)[key], value, rtol=1e-7, atol=1e-9, err_msg=key)


@settings(max_examples=40, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1))
def test_permuting_rows_changes_nothing(problem: tuple[np.ndarray, ...], seed: int) -> None:
    """Order-dependent tie rules aside (AURC and quantile bins break confidence ties by row index)."""
    z, y, zt = problem
    perm = np.random.default_rng(seed).permutation(len(y))
    base, _ = evaluate(z, y, SHIFT_INVARIANT_LOSSES, ORDER_FREE_METRICS, teacher_logits=zt)
    permuted, _ = evaluate(z[perm], y[perm], SHIFT_INVARIANT_LOSSES, ORDER_FREE_METRICS, teacher_logits=zt[perm])
    for group in ("losses", "metrics"):
        for key, value in getattr(base, group).items():
            np.testing.assert_allclose(getattr(permuted, group)[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


@settings(max_examples=40, deadline=None)
@given(problems(max_rows=60), st.lists(st.integers(1, 59), max_size=6), st.integers(1, 17))
def test_merged_chunks_equal_the_one_shot_result(problem: tuple[np.ndarray, ...], cuts: list[int], chunk: int) -> None:
    """Split rows at random cuts, evaluate each part separately (with its own chunking) and merge the
    states: the numbers equal one call over all rows, sort-based metrics included."""

    z, y, zt = problem
    assume(oracle.off_discontinuities(z, {15}).all())  # chunks may take other softmax shifts (rounding)
    specs = (*SHIFT_INVARIANT_LOSSES, {"name": "stablemax_ce"}, {"name": "taylor_softmax_ce"})
    one_shot, _ = evaluate(z, y, list(specs), ALL_METRICS, chunk=len(y), teacher_logits=zt)
    batch = validate_batch(logits=z, labels=y, teacher_logits=zt)
    plan = EvaluationPlan(
        batch.layout,
        tuple(LOSS.validate_python(s) for s in specs),
        tuple(METRIC.validate_python(m) for m in ALL_METRICS),
    )
    evaluator = Evaluator(plan)
    bounds = [0, *sorted({c for c in cuts if c < len(y)}), len(y)]
    merged = EvaluationState()
    for lo, hi in itertools.pairwise(bounds):
        part = validate_batch(logits=z[lo:hi], labels=y[lo:hi], teacher_logits=zt[lo:hi])
        state = evaluator.evaluate(part, Chunking(rows=chunk)).state
        merged = merged.merge(EvaluationState.from_bytes(state.to_bytes()))  # as a distributed worker sends it
    result = evaluator.finalize(merged, batch.classes)
    assert result.n == len(y)
    for group in ("losses", "metrics"):
        for key, value in getattr(one_shot, group).items():
            np.testing.assert_allclose(getattr(result, group)[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_float32_agrees_with_float64(problem: tuple[np.ndarray, ...]) -> None:
    z, y, zt = problem
    z = z.astype(np.float32).astype(np.float64)
    zt = zt.astype(np.float32).astype(np.float64)
    smooth_metrics = [m for m in ALL_METRICS if m["name"] in ("accuracy", "nll", "brier", "entropy")]
    f64, _ = evaluate(z, y, SHIFT_INVARIANT_LOSSES, smooth_metrics, np.float64, teacher_logits=zt)
    f32, _ = evaluate(z, y, SHIFT_INVARIANT_LOSSES, smooth_metrics, np.float32, teacher_logits=zt)
    for group in ("losses", "metrics"):
        for key, value in getattr(f64, group).items():
            np.testing.assert_allclose(getattr(f32, group)[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_states_of_different_plans_refuse_to_merge() -> None:
    z, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 3
    batch = validate_batch(logits=z, labels=y)
    states = []
    for metrics in (("accuracy",), ("accuracy", "nll")):
        plan = EvaluationPlan(batch.layout, (), tuple(METRIC.validate_python({"name": m}) for m in metrics))
        states.append(Evaluator(plan).evaluate(batch).state)
    assert states[0].merge(EvaluationState.from_bytes(states[0].to_bytes())).n == 40
    with pytest.raises(IncompatibleStateError, match="different evaluation plans"):
        states[0].merge(EvaluationState.from_bytes(states[1].to_bytes()))
    with pytest.raises(IncompatibleStateError, match="not a serialised evaluation state"):
        EvaluationState.from_bytes(b"PK\x03\x04 not really")

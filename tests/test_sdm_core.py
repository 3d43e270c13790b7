"""The SDM core (app.core.sdm, app.core.neighbours) against sdm.md §9's worked example, an independent
numpy oracle (tests/sdm_oracle.py) on random data, and the spec's properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import softmax

from app.core import sdm as sdm_core
from app.core.fitted_state import IncompatibleFittedStateError
from app.core.graphrun import mapped_outputs
from app.core.neighbours import nearest
from app.core.runtime import SessionCache
from app.core.sdm import (
    LabelledSet,
    Scores,
    SdmEstimator,
    estimator_graph,
    high_reliability_thresholds,
    lower_quantile_index,
    padded_table,
)
from tests import sdm_oracle

# sdm.md §9.1 (C = 2, M = 2, α = 0.95, k = min(2048, 10) = 10).
SUP_H = [
    [0.0, 0.1],
    [0.4, -0.3],
    [-0.6, 0.5],
    [1.2, 0.95],
    [-1.1, -0.8],
    [5.0, 5.2],
    [4.6, 4.7],
    [5.5, 4.4],
    [3.9, 5.6],
    [6.1, 6.0],
]
SUP_Y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
SUP_Z = [
    [2.0, -1.0],
    [1.5, -0.5],
    [1.0, 0.2],
    [-0.3, 0.4],
    [2.5, -2.0],
    [-2.0, 2.2],
    [-1.0, 1.3],
    [-1.5, 1.9],
    [0.6, -0.2],
    [-2.2, 2.5],
]
CAL_H = [
    [0.2, 0.0],
    [-0.3, 0.32],
    [0.5, 0.6],
    [-0.9, -0.2],
    [1.6, 1.3],
    [2.4, 2.1],
    [5.2, 4.9],
    [4.8, 5.4],
    [5.8, 5.1],
    [4.1, 4.0],
    [3.2, 3.6],
    [6.5, 6.6],
]
CAL_Y = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
CAL_Z = [
    [3.0, -2.0],
    [2.2, -1.1],
    [0.9, 0.1],
    [2.6, -1.9],
    [0.1, 0.3],
    [0.2, -0.1],
    [-2.5, 2.8],
    [-1.8, 2.0],
    [-2.9, 3.1],
    [-0.8, 1.6],
    [0.4, 0.1],
    [-2.0, 2.9],
]
TEST_H = [[0.1, 0.2], [5.1, 5.0], [2.6, 2.5], [9.0, -4.0], [0.3, -0.1], [5.05, 5.2]]
TEST_Z = [[2.4, -1.6], [-2.6, 2.9], [0.3, 0.2], [-1.0, 1.5], [0.6, 0.3], [-11.0, 11.0]]

# §9.2, calibration table.
CAL_Q = [3, 4, 1, 4, 0, 0, 4, 2, 4, 3, 0, 4]
CAL_D0 = [0.05, 0.1224, 0.5, 0.4, 0.2825, 2.7625, 0.13, 0.08, 0.58, 0.74, 3.17, 0.52]
CAL_D = [1.0, 0.75, 0.25, 0.5, 0.5, 0.0, 0.5, 0.75, 0.0, 0.0, 0.0, 0.0]
CAL_SDM0 = [
    0.9996801024,
    0.9882792519,
    0.5547106813,
    0.9825610935,
    0.4826782552,
    0.5,
    0.0085931247,
    0.0188735676,
    0.5,
    0.5,
    0.5,
    0.5,
]
S6, S5 = math.sqrt(6.0), math.sqrt(5.0)
CAL_QR = [3, 4, 1, 4, 0, 0, 4, 2, S6, S5, 0, S6]
# §9.2, test table.
TEST_EXPECTED = {
    "prediction": [0, 1, 0, 1, 0, 1],
    "nearest_index": [0, 5, 3, 7, 1, 5],
    "q": [3, 3, 0, 1, 3, 3],
    "d_nearest": [0.02, 0.05, 4.3625, 82.81, 0.05, 0.0025],
    "d": [1, 1, 0, 0, 1, 1],
    "probabilities": [
        [0.9984025559, 0.0015974441],
        [0.0001430879, 0.9998569121],
        [0.5, 0.5],
        [0.5, 0.5],
        [0.6184162392, 0.3815837608],
        [4e-16, 1.0],
    ],
    "q_rescaled": [3, 3, 0, 1, 2.705542755, 3],
    "is_ood": [False, False, True, False, False, False],
    "high_reliability": [True, True, False, False, False, True],
    "effective_sample_size": [[3, 5], [3, 5], [0, 0], [2, 1], [3, 5], [3, 5]],
    "d_lower": [0.2158997243, 0.2158997243, 0, 0, 0.2158997243, 0.2158997243],
    "probabilities_lower": [
        [0.8005776842, 0.1994223158],
        [0.1288545609, 0.8711454391],
        [0.5, 0.5],
        [0.5, 0.5],
        [0.5260372163, 0.4739627837],
        [0.0004784413, 0.9995215587],
    ],
    "q_rescaled_lower": [3, 3, 0, 1, 2.33176208, 3],
    "high_reliability_lower": [False, False, False, False, False, True],
    "d_upper": [1, 1, 1, 1, 1, 1],
    "probabilities_upper": [
        [0.9984025559, 0.0015974441],
        [0.0001430879, 0.9998569121],
        [0.5173217448, 0.4826782552],
        [0.0602828813, 0.9397171187],
        [0.6184162392, 0.3815837608],
        [4e-16, 1.0],
    ],
}


def worked_example(dtype: type = np.float64) -> tuple[LabelledSet, LabelledSet]:
    def labelled(h: list[list[float]], z: list[list[float]], y: list[int]) -> LabelledSet:
        return LabelledSet(np.asarray(h, dtype), np.asarray(z), np.asarray(y, np.int64))

    return labelled(SUP_H, SUP_Z, SUP_Y), labelled(CAL_H, CAL_Z, CAL_Y)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_worked_example_fit(dtype: type) -> None:
    support, calibration = worked_example(dtype)
    estimator = SdmEstimator(alpha=0.95, k=2048).fit(support, calibration)
    assert estimator.k_ == 10
    assert estimator.q_min_ == 3.0
    np.testing.assert_allclose(estimator.psi_, [0.9825610935, 0.9914068753], atol=1e-10)
    assert estimator.hr_class_conditional_accuracy == 0.95
    tolerance = 1e-12 if dtype is np.float64 else 1e-6  # float32 coordinates carry ~1e-7 representation error
    np.testing.assert_allclose(estimator.distance_ecdfs_[0], [0.05, 0.1224, 0.4, 0.5], atol=tolerance)
    np.testing.assert_allclose(estimator.distance_ecdfs_[1], [0.08, 0.13, 0.52, 0.58, 0.74], atol=tolerance)
    np.testing.assert_allclose(estimator.similarity_ecdfs_[0], [0, 0, 1, 3, 4, 4], atol=1e-12)
    np.testing.assert_allclose(estimator.similarity_ecdfs_[1], [0, 2, S5, S6, S6, 4], atol=1e-12)
    loss = estimator.calibration_["sdm_loss"]
    assert loss["marginal"] == pytest.approx(0.40223491674, abs=1e-10)
    assert loss["balanced"] == pytest.approx(0.40223491674, abs=1e-10)
    assert estimator.calibration_["ood"] == 3  # calibration rows 4, 5 and 10 have q = 0


def test_worked_example_calibration_rows() -> None:
    support, calibration = worked_example()
    estimator = SdmEstimator(alpha=0.95, k=2048).fit(support, calibration)
    rows = estimator.score(calibration.embeddings, calibration.logits)
    assert rows.q.tolist() == CAL_Q
    np.testing.assert_allclose(rows.d_nearest, CAL_D0, rtol=1e-12)
    np.testing.assert_allclose(rows.columns["d"], CAL_D, atol=1e-12)
    np.testing.assert_allclose(rows.columns["probabilities"][:, 0], CAL_SDM0, atol=1e-10)
    np.testing.assert_allclose(rows.columns["q_rescaled"], CAL_QR, atol=1e-9)


def assert_rows_match(
    rows: Scores, expected: dict[str, np.ndarray], tolerance: dict[str, tuple[float, float]], dtype: type | None = None
) -> None:
    """Every expected field: integers and flags exactly, floats to (rtol, atol) per field (default under
    "*"); with `dtype`, every float column must have it."""
    got = {"prediction": rows.prediction, "q": rows.q, "d_nearest": rows.d_nearest, "nearest_index": rows.nearest_index}
    got |= rows.columns
    for name, want in expected.items():
        if want.dtype == bool or want.dtype.kind == "i":
            assert got[name].tolist() == want.tolist(), name
            continue
        if dtype is not None:
            assert got[name].dtype == dtype, name
        rtol, atol = tolerance.get(name, tolerance["*"])
        np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_worked_example_test_points(dtype: type) -> None:
    support, calibration = worked_example(dtype)
    estimator = SdmEstimator(alpha=0.95, k=2048).fit(support, calibration)
    rows = estimator.score(np.asarray(TEST_H, dtype), np.asarray(TEST_Z))
    d_nearest = (1e-6, 1e-6) if dtype is np.float32 else (1e-9, 1e-9)  # float32 coordinates: ~1e-7 each
    expected = {name: np.asarray(values) for name, values in TEST_EXPECTED.items()}
    assert_rows_match(rows, expected, {"*": (1e-9, 1e-9), "d_nearest": d_nearest})


def test_worked_example_support_leave_self_out() -> None:
    support, calibration = worked_example()
    estimator = SdmEstimator(alpha=0.95, k=2048).fit(support, calibration)
    stats = estimator.support_statistics(support)
    assert stats["q"].tolist() == [3, 2, 3, 0, 3, 2, 2, 3, 0, 3]
    np.testing.assert_allclose(stats["d_nearest"], [0.32, 0.32, 0.52, 2.1625, 1.94, 0.41, 0.41, 0.89, 1.3, 1.85])
    np.testing.assert_allclose(stats["d"], [1, 1, 0.5, 0, 0, 0.5, 0.5, 0.25, 0.25, 0.25], atol=1e-12)
    assert stats["sdm_loss"]["marginal"] == pytest.approx(0.3244983082, abs=1e-10)


def clustered(
    rng: np.random.Generator, n: int, classes: int, dim: int, centres: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Labelled points around class centres; logits a noisy linear read-out, so most are predicted right."""
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.standard_normal((n, dim))
    z = x @ weight + 0.8 * rng.standard_normal((n, classes))
    return x, z, y


@pytest.mark.parametrize(
    ("classes", "n_support", "n_cal", "k", "alpha", "seed"),
    [(2, 120, 200, 50, 0.95, 0), (3, 150, 300, 2048, 0.9, 1), (10, 200, 400, 30, 0.8, 2), (3, 90, 60, 7, 1.0, 3)],
)
@pytest.mark.parametrize("precision", [np.float64, np.float32])
def test_random_data_matches_the_numpy_oracle(
    classes: int, n_support: int, n_cal: int, k: int, alpha: float, seed: int, precision: type
) -> None:
    rng = np.random.default_rng(seed)
    dim = 6
    centres = 3.0 * rng.standard_normal((classes, dim))
    weight = centres.T / 2
    support = clustered(rng, n_support, classes, dim, centres, weight)
    calibration = clustered(rng, n_cal, classes, dim, centres, weight)
    test_x, test_z, _ = clustered(rng, 150, classes, dim, centres, weight)
    test_x[:10] += 6.0  # some far-away points
    cast = [tuple(np.asarray(a, precision) if i == 0 else a for i, a in enumerate(s)) for s in (support, calibration)]
    expected_fit = sdm_oracle.fit(cast[0], cast[1], alpha, k)
    estimator = SdmEstimator(alpha, k).fit(LabelledSet(*cast[0]), LabelledSet(*cast[1]))
    assert estimator.q_min_ == expected_fit.q_min
    np.testing.assert_allclose(estimator.psi_, expected_fit.psi, atol=1e-12)
    for got, want in zip(estimator.similarity_ecdfs_, expected_fit.similarity_ecdfs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12)
    rows = estimator.score(test_x.astype(precision), test_z)
    expected = sdm_oracle.score(expected_fit, test_x.astype(precision), test_z)
    d_nearest = (1e-10 if precision is np.float64 else 2e-6, 1e-10)  # float32 search
    assert_rows_match(rows, expected, {"*": (1e-10, 1e-10), "d_nearest": d_nearest})


@pytest.mark.parametrize(("classes", "k", "alpha", "seed"), [(2, 60, 0.95, 10), (10, 40, 0.8, 11), (4, 2048, 0.9, 12)])
def test_float32_logits_run_the_estimator_in_float32(classes: int, k: int, alpha: float, seed: int) -> None:
    """Float32 logits are computed in float32 (as the reference is); against the float64 oracle on the
    same float32 values, flags and counts agree and values to float32 precision (data without ties)."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((classes, 6))
    sets = [clustered(rng, n, classes, 6, centres, centres.T / 2) for n in (150, 300, 120)]
    support, calibration, test = (tuple(a.astype(np.float32) if i < 2 else a for i, a in enumerate(s)) for s in sets)
    estimator = SdmEstimator(alpha, k).fit(LabelledSet(*support), LabelledSet(*calibration))
    expected_fit = sdm_oracle.fit(support, calibration, alpha, k)
    assert estimator.dtype_ == np.float32 and estimator.psi_.dtype == np.float32
    assert estimator.q_min_ == pytest.approx(expected_fit.q_min, rel=1e-5)  # the same candidate, in float32
    np.testing.assert_allclose(estimator.psi_, expected_fit.psi, rtol=1e-6)
    rows = estimator.score(test[0], test[1])
    expected = sdm_oracle.score(expected_fit, test[0], test[1])
    assert_rows_match(rows, expected, {"*": (2e-5, 1e-6)}, dtype=np.float32)


def test_float32_psi_is_compared_with_alpha_rounded_to_float32() -> None:
    """sdm.md §6: the reference compares a float32 ψ with α as torch does, in float32: ψ = f32(0.95)
    passes there (and here, for float32 outputs), while the same value fails a float64 comparison."""
    labels = np.repeat([0, 1], 10)
    probabilities = np.full((20, 2), np.float32(0.05), dtype=np.float32)
    probabilities[np.arange(20), labels] = np.float32(0.95)
    q_rescaled = np.full(20, 3.0)
    q_min, psi = high_reliability_thresholds(q_rescaled, probabilities, labels, 0.95)
    assert q_min == 3.0 and psi.tolist() == [np.float32(0.95)] * 2
    assert high_reliability_thresholds(q_rescaled, probabilities.astype(np.float64), labels, 0.95)[0] == math.inf


def test_random_data_exercise_both_outcomes_of_the_search() -> None:
    """The oracle comparison above covers a fitted region and an empty one (q′_min = ∞)."""
    outcomes = []
    for classes, n_support, n_cal, k, alpha, seed in [(2, 120, 200, 50, 0.95, 0), (10, 200, 400, 30, 0.8, 2)]:
        rng = np.random.default_rng(seed)
        centres = 3.0 * rng.standard_normal((classes, 6))
        support = clustered(rng, n_support, classes, 6, centres, centres.T / 2)
        calibration = clustered(rng, n_cal, classes, 6, centres, centres.T / 2)
        outcomes.append(
            math.isfinite(SdmEstimator(alpha, k).fit(LabelledSet(*support), LabelledSet(*calibration)).q_min_)
        )
    assert outcomes == [True, False]


@pytest.mark.parametrize("alpha", [0.95, 0.9, 0.75, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_threshold_search_matches_the_naive_scan(alpha: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, classes = 300, 3
    labels = rng.integers(0, classes, n)
    q_rescaled = np.where(rng.random(n) < 0.1, 0.0, rng.integers(1, 12, n) + np.where(rng.random(n) < 0.3, 0.5, 0.0))
    probabilities = softmax(4 * rng.standard_normal((n, classes)) + 6 * np.eye(classes)[labels], axis=1)
    got = high_reliability_thresholds(q_rescaled, probabilities, labels, alpha)
    want = sdm_oracle.algorithm_1(q_rescaled, probabilities, labels, alpha)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 6), st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60
    ),
    alpha=st.sampled_from([0.55, 0.8, 0.9, 0.95, 1.0]),
)
def test_threshold_search_matches_the_naive_scan_on_tied_values(
    rows: list[tuple[int, int, float, bool]], alpha: float
) -> None:
    """Few distinct q′ (many ties) and sdm values drawn freely, some exactly 1 (saturated)."""
    labels = np.asarray([r[0] for r in rows])
    q_rescaled = np.asarray([r[1] / 2 for r in rows])  # 0, 0.5 (OOD), 1, 1.5, …
    own = np.asarray([1.0 if r[3] else r[2] for r in rows])
    probabilities = np.full((len(rows), 3), 0.0)
    probabilities[np.arange(len(rows)), labels] = own
    probabilities[np.arange(len(rows)), (labels + 1) % 3] = 1.0 - own
    got = high_reliability_thresholds(q_rescaled, probabilities, labels, alpha)
    want = sdm_oracle.algorithm_1(q_rescaled, probabilities, labels, alpha)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


def test_quantile_index_reproduces_the_float_trap() -> None:
    """sdm.md §6: int((1 − α)·n) with 1 − α in float64."""
    assert lower_quantile_index(20, 0.95) == 1
    assert lower_quantile_index(10, 0.9) == 0
    assert lower_quantile_index(1, 0.5) == 0


def run_estimator(
    logits: np.ndarray, q: np.ndarray, d_nearest: np.ndarray, ecdfs: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """The estimator graph alone, with distance eCDFs given and no fitted region."""
    classes = logits.shape[1]
    f64 = np.dtype(np.float64)
    table, sizes = padded_table(ecdfs, f64)
    empty_table, empty_sizes = padded_table([np.zeros(0)] * classes, f64)
    return mapped_outputs(
        "sdm-estimator:float64",
        lambda: estimator_graph(f64),
        {"logits": logits, "prediction": logits.argmax(1), "q": q, "d_nearest": d_nearest},
        {
            "distance_table": table,
            "distance_sizes": sizes,
            "similarity_table": empty_table,
            "similarity_sizes": empty_sizes,
            "psi": np.zeros(classes),
            "q_min": np.asarray(math.inf),
            "dkw_log": np.asarray(math.log(40.0)),
        },
    )


logit_rows = arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 6)), elements=st.floats(-30, 30))
# Distinct logits at least 1/4 apart, so that scaling by ln(2 + q)·d ≥ ln(2)/2 cannot round two into a tie.
spaced_logit_rows = arrays(
    np.float64, st.tuples(st.integers(1, 8), st.integers(2, 6)), elements=st.integers(-120, 120).map(lambda v: v / 4)
)


@settings(max_examples=40, deadline=None)
@given(logits=logit_rows)
def test_q_e_minus_2_and_d_1_give_the_softmax(logits: np.ndarray) -> None:
    n, classes = logits.shape
    ecdfs = [np.asarray([1.0, 2.0])] * classes  # d_nearest = 0 ≤ every minimum: d = 1
    out = run_estimator(logits, np.full(n, math.e - 2), np.zeros(n), ecdfs)
    np.testing.assert_array_equal(out["d"], 1.0)
    np.testing.assert_allclose(out["probabilities"], softmax(logits, axis=1), rtol=1e-12, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(logits=logit_rows, q=st.integers(0, 3000))
def test_d_0_gives_the_uniform_distribution(logits: np.ndarray, q: int) -> None:
    n, classes = logits.shape
    out = run_estimator(logits, np.full(n, float(q)), np.full(n, 5.0), [np.asarray([1.0, 2.0])] * classes)
    np.testing.assert_array_equal(out["d"], 0.0)
    np.testing.assert_allclose(out["probabilities"], 1.0 / classes, rtol=1e-15)
    np.testing.assert_allclose(out["q_rescaled"], np.minimum(q, (2.0 + q) ** (1.0 / classes)), rtol=1e-14)


@settings(max_examples=40, deadline=None)
@given(logits=spaced_logit_rows, q=st.integers(0, 3000), d_nearest=st.floats(0, 1.99))
def test_argmax_of_the_sdm_output_is_the_prediction_when_d_is_positive(
    logits: np.ndarray, q: int, d_nearest: float
) -> None:
    n, classes = logits.shape
    out = run_estimator(logits, np.full(n, float(q)), np.full(n, d_nearest), [np.asarray([1.0, 2.0])] * classes)
    assert (out["d"] > 0).all()
    # ties among the scaled logits can only come from ties among the logits (the factor is positive)
    np.testing.assert_array_equal(out["probabilities"].argmax(1), logits.argmax(1))


def test_a_query_equal_to_a_support_point_has_d_nearest_0_and_d_1() -> None:
    rng = np.random.default_rng(7)
    centres = 3.0 * rng.standard_normal((3, 5))
    support = clustered(rng, 80, 3, 5, centres, centres.T / 2)
    calibration = clustered(rng, 90, 3, 5, centres, centres.T / 2)
    for precision in (np.float32, np.float64):
        s = LabelledSet(support[0].astype(precision), support[1], support[2])
        estimator = SdmEstimator(0.9, 20).fit(s, LabelledSet(calibration[0].astype(precision), *calibration[1:]))
        assert all(len(e) for e in estimator.distance_ecdfs_)
        rows = estimator.score(s.embeddings[:25], support[1][:25])
        np.testing.assert_array_equal(rows.d_nearest, 0.0)
        np.testing.assert_array_equal(rows.nearest_index, np.arange(25))
        np.testing.assert_array_equal(rows.columns["d"], 1.0)


def test_neighbour_ties_go_to_the_lower_support_index_across_chunks() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(-3, 4, (40, 3)).astype(np.float64)  # integer grid: many exactly tied distances
    support = np.concatenate([base, base, base])
    queries = rng.integers(-3, 4, (30, 3)).astype(np.float64)
    want_d, want_i = sdm_oracle.neighbours(queries, support, 25)
    for chunk in (7, 40, 10_000):  # support chunks smaller than k, between k and the set, and the whole set
        got = nearest(queries, support, 25, block_bytes=4096, support_chunk=chunk)
        np.testing.assert_array_equal(got.indices, want_i)
        np.testing.assert_allclose(got.distances, want_d, atol=1e-12)


def test_leave_self_out_drops_the_point_itself() -> None:
    rng = np.random.default_rng(4)
    support = rng.standard_normal((60, 4))
    got = nearest(support, support, 5, exclude_self=True)
    want_d, want_i = sdm_oracle.neighbours(support, support, 6)
    np.testing.assert_array_equal(got.indices, want_i[:, 1:])
    np.testing.assert_allclose(got.distances, want_d[:, 1:], atol=1e-12)


def test_fitted_state_round_trips() -> None:
    support, calibration = worked_example(np.float32)
    estimator = SdmEstimator(alpha=0.95, k=4).fit(support, calibration)
    state = estimator.fitted_arrays()
    assert int(state["state_version"]) == 1
    before_versions = {k: v for k, v in state.items() if k != "state_version"}  # blobs stored before versions
    x, z = np.asarray(TEST_H, np.float32), np.asarray(TEST_Z)
    a = estimator.score(x, z)
    for stored in (state, before_versions):
        restored = SdmEstimator(alpha=0.95, k=4).load_arrays(stored)
        b = restored.score(x, z)
        assert restored.q_min_ == estimator.q_min_ and restored.k_ == 4 and restored.dtype_ == estimator.dtype_
        for name in a.columns:
            np.testing.assert_array_equal(a.columns[name], b.columns[name], err_msg=name)
    with pytest.raises(IncompatibleFittedStateError, match="state version 2"):
        SdmEstimator().load_arrays({**state, "state_version": np.asarray(2)})


def test_no_correct_calibration_prediction_gives_an_empty_region() -> None:
    support, calibration = worked_example()
    flipped = LabelledSet(calibration.embeddings, -calibration.logits, calibration.labels)  # every prediction wrong
    estimator = SdmEstimator().fit(support, flipped)
    assert estimator.q_min_ == math.inf and estimator.hr_class_conditional_accuracy == 0.0
    np.testing.assert_array_equal(estimator.psi_, 0.0)
    rows = estimator.score(np.asarray(TEST_H), np.asarray(TEST_Z))
    assert not rows.columns["high_reliability"].any() and not rows.columns["high_reliability_lower"].any()


def test_scoring_is_row_wise_under_permutation_and_chunking() -> None:
    rng = np.random.default_rng(8)
    centres = 3.0 * rng.standard_normal((3, 5))
    support = clustered(rng, 150, 3, 5, centres, centres.T / 2)
    calibration = clustered(rng, 120, 3, 5, centres, centres.T / 2)
    test_x, test_z, _ = clustered(rng, 90, 3, 5, centres, centres.T / 2)
    estimator = SdmEstimator(0.9, 40).fit(LabelledSet(*support), LabelledSet(*calibration))
    whole = estimator.score(test_x, test_z)
    order = rng.permutation(90)
    permuted = estimator.score(test_x[order], test_z[order])
    parts = [estimator.score(test_x[a : a + 17], test_z[a : a + 17]) for a in range(0, 90, 17)]
    np.testing.assert_array_equal(permuted.q, whole.q[order])
    np.testing.assert_array_equal(permuted.nearest_index, whole.nearest_index[order])
    for name, column in whole.columns.items():
        # integers and flags exactly; floats to rounding (SIMD lanes depend on a row's place in the batch)
        joined = np.concatenate([p.columns[name] for p in parts])
        np.testing.assert_allclose(permuted.columns[name], column[order], rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(joined, column, rtol=1e-12, atol=0, err_msg=name)


def test_query_blocks_give_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring keeps only one block of [rows, k] neighbour lists at a time; block edges change nothing."""
    support, calibration = worked_example()
    estimator = SdmEstimator(alpha=0.95, k=2048).fit(support, calibration)
    whole = estimator.score(np.asarray(TEST_H), np.asarray(TEST_Z))
    monkeypatch.setattr(sdm_core, "NEIGHBOUR_LIST_BYTES", 12 * 11 * 4)  # blocks of 4 rows for k = 10
    blocked = estimator.score(np.asarray(TEST_H), np.asarray(TEST_Z))
    assert blocked.q.tolist() == whole.q.tolist() and blocked.nearest_index.tolist() == whole.nearest_index.tolist()
    for name, column in whole.columns.items():
        np.testing.assert_allclose(blocked.columns[name], column, rtol=1e-12, atol=0, err_msg=name)


def test_the_estimator_keeps_hyper_parameters_only() -> None:
    """scikit-learn's contract: `get_params` rebuilds the unfitted estimator; the runtime is given to
    fit and score, never kept."""
    estimator = SdmEstimator(alpha=0.9, k=7)
    assert estimator.get_params() == {"alpha": 0.9, "k": 7}
    assert SdmEstimator(**estimator.get_params()).get_params() == estimator.get_params()
    support, calibration = worked_example()
    fitted = SdmEstimator(alpha=0.95, k=4).fit(support, calibration)
    assert not any(isinstance(v, SessionCache) for v in vars(fitted).values())

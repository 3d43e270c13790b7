"""Calibrators against the spec's golden values (losses_calibration.md §3), an independent optimizer,
and their properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from app.core.calibration import apply
from app.core.calibration.fitters import (
    AffineScaling,
    BetaCalibration,
    CorrectnessAwareTemperature,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from app.core.calibration.registry import METHODS
from app.core.chunking import Chunking
from app.core.fitted_state import IncompatibleFittedStateError
from app.core.graphrun import mapped
from app.core.runtime import RuntimeConfig, SessionCache
from tests.conftest import Y_A, Y_B, Z_A, Z_B

S_D = np.array([0.1, 0.3, 0.4, 0.6, 0.8, 0.9])
Y_D = np.array([0, 0, 1, 0, 1, 1])
S_TEST = np.array([0.05, 0.35, 0.5, 0.65, 0.95])


def binary_logits(s: np.ndarray) -> np.ndarray:
    """Logits whose softmax is [1 − s, s]: dataset D as a two-class problem."""
    return np.log(np.column_stack([1 - s, s]))


def run_graph(model: object, logits: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return session.run(None, {"logits": logits})[0]


@pytest.mark.parametrize(
    ("z", "y", "golden_t", "nll_after"),
    [(Z_A, Y_A, 1.5332185085, 0.8976343033), (Z_B, Y_B, 0.7138390218, 0.5997393988)],
    ids=["A", "B"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_temperature_matches_golden_and_a_high_precision_optimizer(
    z: np.ndarray, y: np.ndarray, golden_t: float, nll_after: float, dtype: type
) -> None:
    fitted = TemperatureScaling().fit(z.astype(dtype), y)
    tol = 1e-6 if dtype is np.float64 else 1e-5
    np.testing.assert_allclose(fitted.temperature_, golden_t, rtol=tol)
    np.testing.assert_allclose(fitted.fit_info_["nll"], nll_after, rtol=tol)
    # the gradient is evaluated in the data's dtype: each of its n terms Σ_c z_c (p_c − y_c) carries
    # ~(C + n)·eps·max|z| rounding, whichever SIMD kernel computed the exp (float32: ~1e-6, not 1e-7)
    rounding = 4 * (z.shape[1] + len(y)) * float(np.finfo(dtype).eps) * float(np.abs(z).max())
    assert abs(fitted.fit_info_["gradient"]) < max(1e-7, rounding) and not fitted.fit_info_["bound_hit"]

    def nll(t: float) -> float:
        return float(-np.mean(log_softmax(z / t, axis=1)[np.arange(len(y)), y]))

    reference = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-13}).x
    np.testing.assert_allclose(fitted.temperature_, reference, rtol=tol)
    if dtype is np.float64:  # a minimum: finite differences on both sides are not lower
        t = fitted.temperature_
        assert nll(t) <= nll(t * (1 + 1e-4)) and nll(t) <= nll(t * (1 - 1e-4))


def test_temperature_reports_the_bound_on_separable_data() -> None:
    z = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 0.0]])
    fitted = TemperatureScaling(bounds=(0.05, 20)).fit(z, np.array([0, 1, 0]))
    assert fitted.fit_info_["bound_hit"] and fitted.temperature_ == pytest.approx(0.05)


def test_temperature_probabilities_match_the_spec() -> None:
    probs = TemperatureScaling().fit(Z_A, Y_A).transform(Z_A)
    expected = [
        [0.6590804987, 0.2477726389, 0.0931468625],
        [0.1149908592, 0.1227408124, 0.7622683283],
        [0.1647116883, 0.6070687901, 0.2282195216],
        [1 / 3, 1 / 3, 1 / 3],
    ]
    np.testing.assert_allclose(probs, expected, atol=1e-8)


@pytest.mark.parametrize(("z", "y", "golden_t"), [(Z_A, Y_A, 1.4724919927), (Z_B, Y_B, 1.1818064701)], ids=["A", "B"])
def test_correctness_aware_temperature_matches_golden(z: np.ndarray, y: np.ndarray, golden_t: float) -> None:
    fitted = CorrectnessAwareTemperature().fit(z, y)
    np.testing.assert_allclose(fitted.temperature_, golden_t, rtol=1e-6)
    if golden_t == 1.4724919927:
        np.testing.assert_allclose(fitted.fit_info_["ca_loss"], 0.1629539330, rtol=1e-8)
        np.testing.assert_allclose(fitted.loss(z, y, 1.0), 0.1774339034, rtol=1e-8)


def test_vector_scaling_reaches_the_golden_optimum() -> None:
    fitted = AffineScaling("vector", False).fit(Z_B, Y_B)
    np.testing.assert_allclose(fitted.fit_info_["objective"], 0.5126249287, rtol=1e-8)
    probs = fitted.transform(Z_B)
    np.testing.assert_allclose(-np.mean(np.log(probs[np.arange(10), Y_B])), 0.5126249287, rtol=1e-8)


@pytest.mark.parametrize(
    ("weight", "bias", "on_log_probs", "row1", "row4", "nll"),
    [
        (
            np.array([1.2, 0.8, 1.0]),
            np.array([0.1, -0.2, 0.0]),
            False,
            [0.8845986036, 0.0886888332, 0.0267125632],
            [0.4469466455, 0.2219471358, 0.3311062187],
            0.9241380202,
        ),
        (
            np.array([[1.0, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.1]]),
            np.array([0, 0.1, -0.1]),
            False,
            [0.7715314594, 0.2000120166, 0.0284565240],
            [0.3671654011, 0.3322249935, 0.3006096054],
            0.8530150260,
        ),
        (
            np.array([[1.0, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.1]]),
            np.array([0, 0.1, -0.1]),
            True,
            [0.6886989383, 0.2795179410, 0.0317831206],
            [0.2952765539, 0.4065206982, 0.2982027478],
            0.9051010006,
        ),
    ],
    ids=["vector", "matrix", "dirichlet"],
)
def test_affine_apply_graphs_match_golden(
    weight: np.ndarray, bias: np.ndarray, on_log_probs: bool, row1: list[float], row4: list[float], nll: float
) -> None:
    probs = run_graph(
        apply.standalone(lambda z: apply.affine(z, weight, bias, on_log_probs), np.dtype(np.float64)), Z_A
    )
    np.testing.assert_allclose(probs[0], row1, atol=1e-9)
    np.testing.assert_allclose(probs[3], row4, atol=1e-9)
    np.testing.assert_allclose(-np.mean(np.log(probs[np.arange(4), Y_A])), nll, rtol=1e-9)


@pytest.mark.parametrize("kind", ["matrix", "dirichlet"])
def test_regularised_matrix_fits_converge_and_match_the_numpy_gradient(kind: str) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 4)) * 2
    y = np.where(rng.random(300) < 0.7, z.argmax(1), rng.integers(0, 4, 300))
    fitted = AffineScaling("matrix", kind == "dirichlet", reg_lambda=0.01, reg_mu=0.01).fit(z, y)
    assert fitted.fit_info_["converged"] and fitted.fit_info_["gradient"] < 1e-6
    x = log_softmax(z, axis=1) if kind == "dirichlet" else z
    p = softmax(x @ fitted.weights_.T + fitted.bias_, axis=1)
    residual = (p - np.eye(4)[y]) / len(y)  # numpy gradient of the mean NLL at the optimum, plus ODIR
    off = ~np.eye(4, dtype=bool)
    grad_w = residual.T @ x + 2 * 0.01 * np.where(off, fitted.weights_, 0) / 12
    grad_b = residual.sum(0) + 2 * 0.01 * fitted.bias_ / 4
    assert np.max(np.abs(grad_w)) < 1e-6 and np.max(np.abs(grad_b)) < 1e-6


def test_histogram_binning_matches_golden_left_closed_linspace_edges() -> None:
    fitted = HistogramBinning(bins=5).fit(binary_logits(S_D), Y_D)
    np.testing.assert_allclose(fitted.bin_values_[1], [0, 0, 0.5, 0.7, 1.0], atol=1e-12)  # 0.7: empty bin's centre
    np.testing.assert_allclose(fitted.transform(binary_logits(S_TEST))[:, 1], [0, 0, 0.5, 0.7, 1.0], atol=1e-9)


def test_isotonic_matches_golden_and_sklearn_interpolation() -> None:
    fitted = IsotonicCalibration().fit(binary_logits(S_D), Y_D)
    np.testing.assert_allclose(fitted.thresholds_y_[1][:6], [0, 0, 0.5, 0.5, 1, 1], atol=1e-12)
    np.testing.assert_allclose(fitted.transform(binary_logits(S_TEST))[:, 1], [0, 0.25, 0.5, 0.625, 1.0], atol=1e-9)


def test_platt_matches_golden() -> None:
    fitted = PlattScaling().fit(binary_logits(S_D), Y_D)
    np.testing.assert_allclose([fitted.a_, fitted.b_], [-0.6245290486, 0.0593308671], atol=5e-7)
    expected = [0.1303102332, 0.3903267771, 0.4851716328, 0.5810967064, 0.8556421320]
    np.testing.assert_allclose(fitted.transform(binary_logits(S_TEST))[:, 1], expected, atol=5e-7)


def test_beta_matches_golden() -> None:
    """betacal fits with scikit-learn's solver tolerance; the spec gives ~1e-6, our optimum is tighter."""
    fitted = BetaCalibration().fit(binary_logits(S_D), Y_D)
    np.testing.assert_allclose([fitted.a_, fitted.b_], [0.92291757, 1.96764293], atol=1e-4)
    midpoint = minimize_scalar(
        lambda m: (fitted.a_ * np.log(m) - fitted.b_ * np.log(1 - m) + fitted.c_) ** 2,
        bounds=(1e-6, 1 - 1e-6),
        method="bounded",
        options={"xatol": 1e-12},
    ).x
    np.testing.assert_allclose(midpoint, 0.54190028, atol=1e-4)
    expected = [0.0257178089, 0.2512601846, 0.4386896383, 0.6676260954, 0.9924344934]
    np.testing.assert_allclose(fitted.transform(binary_logits(S_TEST))[:, 1], expected, atol=1e-5)


def test_beta_apply_only_matches_golden() -> None:
    graph = apply.standalone(lambda z: apply.sigmoid_map(z, np.array([1.2, -0.8]), 0.1, "binary"), np.dtype(np.float64))
    expected = [0.0306544268, 0.3067919763, 0.4558009518, 0.6041813383, 0.9194600948]
    np.testing.assert_allclose(run_graph(graph, binary_logits(S_TEST))[:, 1], expected, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6))
def test_temperature_never_changes_the_argmax(seed: int, classes: int) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(40, classes)) * rng.choice([0.3, 3.0])
    y = rng.integers(0, classes, 40)
    probs = TemperatureScaling().fit(z, y).transform(z)
    np.testing.assert_array_equal(probs.argmax(1), z.argmax(1))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_isotonic_is_monotone_in_the_score(seed: int) -> None:
    rng = np.random.default_rng(seed)
    s = rng.random(60)
    y = (rng.random(60) < s).astype(int)
    fitted = IsotonicCalibration().fit(binary_logits(np.clip(s, 1e-6, 1 - 1e-6)), y)
    grid = np.linspace(0.001, 0.999, 200)
    out = fitted.transform(binary_logits(grid))[:, 1]
    assert np.all(np.diff(out) >= -1e-12)


@pytest.mark.parametrize(
    "calibrator",
    [
        TemperatureScaling(),
        CorrectnessAwareTemperature(),
        AffineScaling("vector", False),
        AffineScaling("matrix", False, 0.01, 0.01),
        AffineScaling("matrix", True, 0.01, 0.01),
        HistogramBinning(5),
        IsotonicCalibration(),
        PlattScaling(),
        BetaCalibration(),
    ],
    ids=lambda c: c.method,
)
def test_rows_sum_to_one_and_restore_round_trips(calibrator: object) -> None:
    rng = np.random.default_rng(9)
    z = rng.normal(size=(200, 4)) * 2
    y = np.where(rng.random(200) < 0.6, z.argmax(1), rng.integers(0, 4, 200))
    fitted = calibrator.fit(z, y)  # type: ignore[attr-defined]
    probs = fitted.transform(z)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert np.all(probs >= 0)
    restored = type(fitted).__new__(type(fitted))
    restored.__dict__.update({k: v for k, v in fitted.__dict__.items() if not k.endswith("_")})
    np.testing.assert_allclose(restored.load(fitted.fitted()).transform(z), probs, atol=1e-12)


def test_mapped_runs_in_chunks_like_one_call() -> None:
    z = np.random.default_rng(1).normal(size=(1000, 3))
    graph = lambda: apply.standalone(lambda z: apply.temperature(z, 2.0), np.dtype(np.float64))  # noqa: E731
    whole = mapped("chunk-test", graph, {"logits": z})
    chunked = mapped("chunk-test", graph, {"logits": z}, SessionCache(RuntimeConfig(chunking=Chunking(bytes=240))))
    np.testing.assert_array_equal(whole, chunked)


def test_view_temperatures_follow_the_documented_formula() -> None:
    from tests.test_api_calibrators import views_data

    views, labels = views_data()
    fitted = CorrectnessAwareTemperature().fit(views, labels)
    original = views[:, 0, :]
    agreement = (views[:, 1:, :].argmax(2) == original.argmax(1)[:, None]).mean(1)
    per_row = np.clip(fitted.temperature_ * np.exp(fitted.agreement_slope_ * (1 - agreement)), 0.1, 10.0)
    np.testing.assert_allclose(fitted.transform(views), softmax(original / per_row[:, None], axis=1), atol=1e-12)

    # the fitted (T, s) is a minimum of the CA loss: nudging either parameter does not lower it
    def loss(t: float, s: float) -> float:
        return fitted.loss(original, labels, np.clip(t * np.exp(s * (1 - agreement)), 0.1, 10.0)[:, None])

    best = loss(fitted.temperature_, fitted.agreement_slope_)  # type: ignore[arg-type]
    for dt, ds in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        assert best <= loss(fitted.temperature_ * (1 + dt), fitted.agreement_slope_ + ds) + 1e-12  # type: ignore[operator]


def test_session_cache_keys_tell_fitted_states_apart() -> None:
    """Two calibrators of one method share the session cache: their keys must differ with any state."""
    a = TemperatureScaling().load({"temperature": 1.5})
    b = TemperatureScaling().load({"temperature": 2.5})
    assert a.signature(np.dtype(np.float64)) != b.signature(np.dtype(np.float64))
    assert not np.allclose(a.transform(Z_A), b.transform(Z_A))
    views = {"temperature": 1.2, "agreement_slope": 3.0}
    wide = CorrectnessAwareTemperature((0.1, 10.0)).load(views)  # bounds: a hyper-parameter, not fitted state
    narrow = CorrectnessAwareTemperature((0.1, 1.5)).load(views)
    assert wide.signature(np.dtype(np.float64)) != narrow.signature(np.dtype(np.float64))


def test_fitted_state_round_trips_and_refuses_other_versions() -> None:
    from tests.test_api_calibrators import views_data

    views, y = views_data()
    z = np.ascontiguousarray(views[:, 0, :])
    for method in ("temperature", "vector_scaling", "dirichlet", "histogram_binning", "isotonic", "platt", "beta"):
        fitted = METHODS[method].create(METHODS[method].params()).fit(z, y)
        state = fitted.fitted()
        assert state["state_version"] == 1 and not any(k.endswith("_") for k in state)
        restored = METHODS[method].create(METHODS[method].params()).load(state)
        np.testing.assert_array_equal(restored.transform(z), fitted.transform(z))
        with pytest.raises(IncompatibleFittedStateError, match="state version 2"):
            METHODS[method].create(METHODS[method].params()).load({**state, "state_version": 2})


def test_every_method_is_its_params_and_its_estimator() -> None:
    """scikit-learn's contract: the constructor keeps each hyper-parameter as given, so `get_params`
    rebuilds an equal estimator (`clone`), and the method's params are among them under api.md's names."""
    for name, method in METHODS.items():
        params = method.params()
        estimator = method.create(params)
        assert params.model_dump().items() <= estimator.get_params().items(), name
        clone = type(estimator)(**estimator.get_params())
        assert clone.get_params() == estimator.get_params(), name
        assert clone.signature(np.dtype(np.float32)) == estimator.signature(np.dtype(np.float32)), name
        assert "cache" not in estimator.get_params() and not hasattr(estimator, "cache"), name

"""`adaptive_temperature` (api.md, "Calibrators"): a per-input temperature T(z) = exp(w·φ̂(z) + b). Its apply
against a numpy oracle of the formula; its gradient against finite differences; its fit never worse than
global temperature scaling on the fit data beyond its penalty; and on two groups miscalibrated in
opposite directions it beats temperature scaling on a held-out split. Over HTTP: fitted names, the ONNX
export equal to `/apply`, bad params."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from scipy.special import log_softmax, softmax

from app.core.calibration import objectives
from app.core.calibration.fitters import AdaptiveTemperature, TemperatureScaling
from tests.test_api_bad_input import assert_problem

C = 5


def two_groups(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Half the rows over-confident (logits × 3), half under-confident (× 0.5): no one temperature fits."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    z = rng.normal(size=(n, C)) + 2 * np.eye(C)[labels]
    return np.where((rng.random(n) < 0.5)[:, None], 3 * z, 0.5 * z), labels


def nll(p: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def oracle(z: np.ndarray, fitted: AdaptiveTemperature) -> np.ndarray:
    top = len(fitted.weights_) - 1
    log_p = log_softmax(z.astype(np.float64), axis=1)
    features = np.column_stack([-np.sort(-log_p, axis=1)[:, :top], -np.sum(np.exp(log_p) * log_p, axis=1)])
    s = ((features - fitted.feature_mean_) / fitted.feature_scale_) @ fitted.weights_ + fitted.bias_
    return softmax(z / np.exp(s)[:, None], axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_apply_matches_the_formula_and_the_fit_beats_one_temperature_on_held_out_rows(dtype: type) -> None:
    z, labels = two_groups(0, 4000)
    z = z.astype(dtype)
    fit, held = slice(0, 2000), slice(2000, 4000)
    adaptive = AdaptiveTemperature().fit(z[fit], labels[fit])
    global_t = TemperatureScaling().fit(z[fit], labels[fit])
    tolerance = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(adaptive.transform(z[held]), oracle(z[held], adaptive), rtol=tolerance, atol=tolerance)
    # never worse on the fit data than w = 0 (global temperature scaling), beyond the penalty it pays
    penalty = adaptive.reg * float(adaptive.weights_ @ adaptive.weights_)
    assert nll(adaptive.transform(z[fit]), labels[fit]) + penalty <= nll(global_t.transform(z[fit]), labels[fit]) + 1e-6
    assert nll(adaptive.transform(z[held]), labels[held]) < nll(global_t.transform(z[held]), labels[held]) - 0.05
    assert set(adaptive.fitted()) >= {"weights", "bias", "feature_mean", "feature_scale"}


def test_the_objectives_gradient_is_its_derivative() -> None:
    z, labels = two_groups(1, 300)
    features = np.random.default_rng(2).normal(size=(300, 6))
    session = ort.InferenceSession(objectives.adaptive_temperature_objective(np.dtype(np.float64)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip

    def run(weight: np.ndarray, bias: float) -> dict[str, np.ndarray]:
        feed = {"logits": z, "labels": labels, "features": features, "weight": weight, "bias": np.asarray(bias)}
        return dict(zip(["nll", "grad_weight", "grad_bias"], session.run(None, feed), strict=True))

    weight, bias = np.random.default_rng(3).normal(size=6) * 0.1, 0.2
    at = run(weight, bias)
    step = 1e-6
    for k in range(6):
        shifted = weight.copy()
        shifted[k] += step
        minus = weight.copy()
        minus[k] -= step
        numeric = (run(shifted, bias)["nll"] - run(minus, bias)["nll"]) / (2 * step)
        assert at["grad_weight"][k] == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    numeric_b = (run(weight, bias + step)["nll"] - run(weight, bias - step)["nll"]) / (2 * step)
    assert at["grad_bias"] == pytest.approx(numeric_b, rel=1e-5)


def test_over_http_the_export_gives_what_apply_gives(client: TestClient) -> None:
    z, labels = two_groups(4, 600)
    created = client.post("/v1/calibrators", json={"method": "adaptive_temperature", "logits": z.tolist(),
                                                   "labels": labels.tolist(), "params": {"reg": 0.05}})  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["params"] == {"reg": 0.05} and len(body["fitted"]["weights"]) == C + 1
    assert body["fit_report"]["after"]["nll"] < body["fit_report"]["before"]["nll"]
    fresh = two_groups(5, 50)[0].astype(np.float32)
    applied = client.post(f"/v1/calibrators/{body['id']}/apply", json={"logits": fresh.tolist()},
                          headers={"Accept": "application/x-npz"})  # fmt: skip
    export = client.get(f"/v1/calibrators/{body['id']}/onnx").content
    session = ort.InferenceSession(export, providers=["CPUExecutionProvider"])
    served = np.load(io.BytesIO(applied.content))["probabilities"]
    np.testing.assert_allclose(session.run(None, {"logits": fresh})[0], served, rtol=1e-6, atol=1e-7)
    bad = client.post("/v1/calibrators", json={"method": "adaptive_temperature", "logits": z.tolist(),
                                               "labels": labels.tolist(), "params": {"reg": -1}})  # fmt: skip
    assert_problem(bad, 422, "params.reg")

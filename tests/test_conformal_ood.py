"""Conformal OOD p-values (api.md, "Guarantees"; Bates et al. 2023): p-values against a numpy oracle and
crepes' non-smoothed p-values, Benjamini–Hochberg against statsmodels' fdr_bh, the properties the
guarantee rests on, and detectors fitted with a calibration set over HTTP (every method, an ensemble,
a model's inputs), with bad input answered 422 and nothing stored."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.conformal import benjamini_hochberg, conformal_p_values
from tests import onnx_models
from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem

D, C = 4, 3


def oracle_p(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([(1 + np.sum(calibration >= s)) / (len(calibration) + 1) for s in scores])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.booleans())
def test_p_values_match_the_oracle_and_crepes(seed: int, m: int, ties: bool) -> None:
    from crepes import ConformalClassifier

    rng = np.random.default_rng(seed)
    calibration, scores = rng.normal(size=m), rng.normal(size=50)
    if ties:  # scores equal to calibration scores count as "at least as large"
        calibration, scores = np.round(calibration, 1), np.round(scores, 1)
    ours = conformal_p_values(np.sort(calibration), scores)
    np.testing.assert_array_equal(ours, oracle_p(calibration, scores))
    theirs = ConformalClassifier().fit(calibration).predict_p(scores[:, None], smoothing=False)[:, 0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.01, 0.05, 0.2]))
def test_benjamini_hochberg_matches_statsmodels_and_lies_between_bonferroni_and_per_row(
    seed: int, alpha: float
) -> None:
    """BH at level α rejects every row Bonferroni (p ≤ α/N) rejects, since p_(k) ≤ α/N ≤ kα/N, and no row
    the per-row rule (p ≤ α) keeps, since kα/N ≤ α."""
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    p = np.concatenate([rng.uniform(size=n // 2), rng.uniform(size=n - n // 2) * rng.uniform(0, 0.05)])
    p = np.round(p, 3)  # ties
    ours = benjamini_hochberg(p, alpha)
    np.testing.assert_array_equal(ours, multipletests(p, alpha=alpha, method="fdr_bh")[0])
    assert (ours >= (p <= alpha / n)).all() and (ours <= (p <= alpha)).all()


def test_in_distribution_p_values_are_super_uniform() -> None:
    """An in-distribution row exchangeable with the m calibration rows has P(p ≤ α) ≤ α (with continuous
    scores, P(p ≤ α) = ⌊α(m + 1)⌋/(m + 1)). 4,000 rows against 200 random calibration sets of m = 99."""
    rng = np.random.default_rng(0)
    for alpha in (0.05, 0.1, 0.3):
        rejected = []
        for _ in range(200):
            scores = rng.standard_t(3, size=119)
            calibration, test = np.sort(scores[:99]), scores[99:]
            rejected.append(np.mean(conformal_p_values(calibration, test) <= alpha))
        expected = np.floor(alpha * 100) / 100
        assert np.mean(rejected) <= alpha + 4 * np.sqrt(alpha * (1 - alpha) / 4000)
        assert abs(np.mean(rejected) - expected) < 4 * np.sqrt(alpha * (1 - alpha) / 4000) + 0.01


def gaussian_rows(seed: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    return rng.normal(size=(n, D)) + 3 * np.eye(C, D)[labels] + shift, labels


def fit(client: TestClient, method: str, params: dict[str, Any], calibration: Any, status: int = 201) -> Any:
    x, labels = gaussian_rows(1, 300)
    body = {"method": method, "params": params, "features": x.tolist(), "labels": labels.tolist()}
    response = client.post("/v1/detectors", json={**body, "calibration": calibration})
    assert response.status_code == status, response.text
    return response.json()


@pytest.mark.parametrize(
    ("method", "params"),
    [("mahalanobis", {}), ("relative_mahalanobis", {"shrinkage": "oas"}), ("knn", {"k": 5})],
)
def test_a_detector_with_a_calibration_set_answers_p_values(
    client: TestClient, method: str, params: dict[str, Any]
) -> None:
    calibration, _ = gaussian_rows(2, 150)
    detector = fit(client, method, params, {"features": calibration.tolist()})
    assert detector["fit_info"]["n_calibration"] == 150
    rows = np.vstack([gaussian_rows(3, 20)[0], gaussian_rows(4, 20, shift=-6.0)[0]])
    answer = client.post(f"/v1/detectors/{detector['id']}/score", json={"features": rows.tolist(), "alpha": 0.1}).json()
    calibration_scores = client.post(f"/v1/detectors/{detector['id']}/score",
                                     json={"features": calibration.tolist()}).json()["scores"]  # fmt: skip
    expected = oracle_p(np.asarray(calibration_scores), np.asarray(answer["scores"]))
    np.testing.assert_array_equal(answer["p_values"], expected)
    assert answer["is_ood"] == (expected <= 0.1).tolist()
    assert np.mean(answer["is_ood"][20:]) > 0.7 and np.mean(answer["is_ood"][:20]) < 0.5  # shifted rows are flagged
    fdr = client.post(f"/v1/detectors/{detector['id']}/score",
                      json={"features": rows.tolist(), "alpha": 0.1, "fdr": True}).json()  # fmt: skip
    assert fdr["is_ood"] == benjamini_hochberg(expected, 0.1).tolist()
    npz = client.post(f"/v1/detectors/{detector['id']}/score", json={"features": rows.tolist()},
                      headers={"Accept": "application/x-npz"})  # fmt: skip
    arrays = np.load(io.BytesIO(npz.content))
    np.testing.assert_array_equal(arrays["p_values"], expected)
    assert arrays["is_ood"].dtype == np.bool_ and arrays["is_ood"].tolist() == (expected <= 0.05).tolist()


def test_a_detector_without_a_calibration_set_answers_neither_field(client: TestClient) -> None:
    x, labels = gaussian_rows(1, 100)
    detector = client.post("/v1/detectors", json={"method": "mahalanobis", "features": x.tolist(),
                                                  "labels": labels.tolist()}).json()  # fmt: skip
    answer = client.post(f"/v1/detectors/{detector['id']}/score", json={"features": x[:3].tolist()}).json()
    assert sorted(answer) == ["nearest_class", "scores"] and "n_calibration" not in detector["fit_info"]


def test_an_ensemble_and_a_models_inputs_calibrate_too(client: TestClient) -> None:
    rng = np.random.default_rng(5)
    layers = {"a": rng.normal(size=(120, 3)), "b": rng.normal(size=(120, 2))}
    labels = rng.integers(0, 2, 120)
    calibration = {"a": rng.normal(size=(60, 3)).tolist(), "b": rng.normal(size=(60, 2)).tolist()}
    ensemble = client.post("/v1/detectors", json={
        "method": "mahalanobis", "features": {k: v.tolist() for k, v in layers.items()}, "labels": labels.tolist(),
        "calibration": {"features": calibration}}).json()  # fmt: skip
    assert ensemble["fit_info"]["n_calibration"] == 60
    scored = client.post(f"/v1/detectors/{ensemble['id']}/score", json={"features": calibration}).json()
    assert min(scored["p_values"]) >= 1 / 61 and max(scored["p_values"]) == 1.0  # its own calibration rows

    data, _ = onnx_models.mlp(d=6, hidden=5, classes=C, dtype=np.float64, seed=1)
    upload = {"request": json.dumps({"name": "mlp", "embedding_output": "embedding"})}
    model = client.post("/v1/models", files={"file": ("m.onnx", data, "application/octet-stream")}, data=upload).json()
    x, y = rng.normal(size=(200, 6)), rng.integers(0, C, 200)
    detector = client.post("/v1/detectors", json={
        "method": "mahalanobis", "params": {"ridge": 0.1}, "model_id": model["id"], "inputs": {"x": x.tolist()},
        "labels": y.tolist(), "calibration": {"inputs": {"x": rng.normal(size=(80, 6)).tolist()}}})  # fmt: skip
    assert detector.status_code == 201, detector.text
    assert detector.json()["fit_info"]["n_calibration"] == 80


BAD = [
    ("calibration of another D", {"features": [[0.0] * (D + 1)] * 5}, "calibration.features"),
    ("NaN calibration", {"features": [[0.0] * D, [float("inf")] * D]}, "calibration.features"),
    ("calibration inputs without a model", {"inputs": {"x": [[0.0] * D]}}, "calibration.inputs"),
    ("unknown calibration field", {"labels": [0]}, "calibration.labels"),
]  # fmt: skip


@pytest.mark.parametrize(("calibration", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_calibration_sets_are_422s_that_store_nothing(client: TestClient, calibration: Any, field: str) -> None:
    before = count_rows(client.app)  # type: ignore[arg-type]
    x, labels = gaussian_rows(1, 50)
    body = {"method": "mahalanobis", "features": x.tolist(), "labels": labels.tolist(), "calibration": calibration}
    assert_problem(client.post("/v1/detectors", content=json.dumps(body, allow_nan=True),
                               headers={"content-type": "application/json"}), 422, field)  # fmt: skip
    assert count_rows(client.app) == before  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0, 1, -0.5, 2])
def test_alpha_outside_zero_one_is_a_422(client: TestClient, alpha: float) -> None:
    detector = fit(client, "mahalanobis", {}, {"features": gaussian_rows(2, 30)[0].tolist()})
    response = client.post(f"/v1/detectors/{detector['id']}/score", json={"features": [[0.0] * D], "alpha": alpha})
    assert_problem(response, 422, "alpha")

"""class_gmm (api.md, "Detectors"): one Gaussian mixture per class fitted by EM, scored in ONNX, against
scikit-learn's `GaussianMixture.score_samples` per class for every covariance type, in float32 and
float64; `return_logits` gives log π_c + log p_c(x), which evaluations take (the export is in
test_export.py's detector methods); bad parameters are 422s naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.mixture import GaussianMixture

from app.core.detectors import ClassGmmDetector
from tests.test_api_bad_input import assert_problem

C, D, PER_CLASS = 3, 4, 2


def rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class two blobs apart (a mixture fits it better than one Gaussian)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    blob = rng.integers(0, 2, n)
    centres = 4.0 * np.eye(C, D)[labels] + np.where(blob[:, None] == 1, 2.5, -2.5) * np.eye(D)[(labels + 1) % D]
    return rng.normal(size=(n, D)) + centres, labels


def reference(x: np.ndarray, labels: np.ndarray, probe: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """log p_c(probe) by scikit-learn, one mixture per class, [N, C]."""
    options = {"covariance_type": params.get("covariance_type", "full"), "reg_covar": params.get("reg_covar", 1e-6)}
    mixtures = [
        GaussianMixture(PER_CLASS, random_state=params.get("seed", 0), **options).fit(x[labels == c]) for c in range(C)
    ]
    return np.column_stack([m.score_samples(probe) for m in mixtures])


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied", "spherical"])
def test_scores_and_logits_match_scikit_learn(client: TestClient, covariance_type: str) -> None:
    x, labels = rows(1, 600)
    probe, _ = rows(2, 40)
    params = {"components": PER_CLASS, "covariance_type": covariance_type, "seed": 3}
    fitted = client.post("/v1/detectors", json={"method": "class_gmm", "params": params, "features": x.tolist(),
                                                "labels": labels.tolist()})  # fmt: skip
    assert fitted.status_code == 201, fitted.text
    assert fitted.json()["fit_info"]["converged"] == [True] * C
    densities = reference(x, labels, probe, params)
    scored = client.post(f"/v1/detectors/{fitted.json()['id']}/score",
                         json={"features": probe.tolist(), "return_logits": True})  # fmt: skip
    assert scored.status_code == 200, scored.text
    np.testing.assert_allclose(scored.json()["scores"], -densities.max(1), rtol=1e-9, atol=1e-9)
    assert scored.json()["nearest_class"] == densities.argmax(1).tolist()
    priors = np.log(np.bincount(labels) / len(labels))
    np.testing.assert_allclose(scored.json()["logits"], densities + priors, rtol=1e-9, atol=1e-9)


def test_float32_features_are_scored_in_float32() -> None:
    x, labels = rows(3, 400)
    probe, _ = rows(4, 30)
    detector = ClassGmmDetector(components=PER_CLASS).fit(x, labels)
    scores64, _ = detector.score(probe)
    scores32, _ = detector.score(probe.astype(np.float32))
    assert scores32.dtype == np.float32
    np.testing.assert_allclose(scores32, scores64, rtol=1e-4, atol=1e-3)


def test_an_evaluation_takes_the_mixture_logits(client: TestClient) -> None:
    x, labels = rows(5, 600)
    probe, truth = rows(6, 200)
    fitted = client.post("/v1/detectors", json={"method": "class_gmm", "params": {"components": PER_CLASS},
                                                "features": x.tolist(), "labels": labels.tolist()}).json()  # fmt: skip
    body = {"features": probe.tolist(), "return_logits": True}
    scored = client.post(f"/v1/detectors/{fitted['id']}/score", json=body)
    logits = np.asarray(scored.json()["logits"])
    evaluated = client.post("/v1/evaluations", json={"logits": logits.tolist(), "labels": truth.tolist(),
                                                     "metrics": ["accuracy"], "store": False})  # fmt: skip
    assert evaluated.status_code == 201, evaluated.text
    assert evaluated.json()["metrics"]["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == truth))
    assert evaluated.json()["metrics"]["accuracy"] > 0.9


def test_bad_mixture_parameters_are_422s(client: TestClient) -> None:
    x, labels = rows(7, 60)
    few = np.concatenate([labels[labels != 2], [2]])
    cases = [
        ({"components": 0}, labels, "params.components"),
        ({"covariance_type": "banded"}, labels, "params.covariance_type"),
        ({"reg_covar": -1.0}, labels, "params.reg_covar"),
        ({"components": 2}, few, "params.components"),  # class 2 has one row
        ({"shrinkage": "oas"}, labels, "params.shrinkage"),
    ]
    for params, given, field in cases:
        body = {"method": "class_gmm", "params": params, "features": x[: len(given)].tolist(), "labels": given.tolist()}
        assert_problem(client.post("/v1/detectors", json=body), 422, field)

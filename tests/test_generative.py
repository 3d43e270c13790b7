"""Gaussian detectors as generative classifiers (api.md, "Detectors"): `covariance: diagonal` (Gaussian
naive Bayes) and `return_logits` = log π_c + log p(x | c) with the full normalising constants, against
scipy's multivariate normal densities (tied: LDA's shared covariance, as scikit-learn's
`LinearDiscriminantAnalysis` estimates it; per_class: QDA's MLE covariances) and scikit-learn's
`GaussianNB`; evaluations take the logits like any others."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import multivariate_normal
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.naive_bayes import GaussianNB

from tests.test_api_bad_input import assert_problem

C, D = 3, 4


def rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    scale = np.array([1.0, 0.5, 2.0])[labels, None]  # classes of different spreads
    return rng.normal(size=(n, D)) * scale + 2.0 * np.eye(C, D)[labels], labels


def fitted(client: TestClient, params: dict[str, Any], method: str = "mahalanobis") -> dict[str, Any]:
    x, labels = rows(1, 600)
    response = client.post("/v1/detectors", json={"method": method, "params": params, "features": x.tolist(),
                                                  "labels": labels.tolist()})  # fmt: skip
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def logits_of(client: TestClient, detector_id: str, x: np.ndarray) -> np.ndarray:
    response = client.post(f"/v1/detectors/{detector_id}/score", json={"features": x.tolist(), "return_logits": True})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["logits"])


def test_tied_logits_are_lda_class_log_densities(client: TestClient) -> None:
    x, labels = rows(1, 600)
    probe, _ = rows(2, 50)
    lda = LinearDiscriminantAnalysis(solver="lsqr", store_covariance=True).fit(x, labels)
    densities = [multivariate_normal(lda.means_[c], lda.covariance_).logpdf(probe) for c in range(C)]
    expected = np.log(lda.priors_) + np.column_stack(densities)
    got = logits_of(client, fitted(client, {})["id"], probe)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    spread = got - lda.decision_function(probe)  # scikit-learn's scores differ by a per-row constant
    np.testing.assert_allclose(spread - spread[:, :1], 0.0, atol=1e-9)


def test_per_class_logits_are_qda_class_log_densities(client: TestClient) -> None:
    x, labels = rows(1, 600)
    probe, _ = rows(3, 50)
    expected = np.column_stack([
        np.log(np.mean(labels == c)) + multivariate_normal(x[labels == c].mean(0), np.cov(x[labels == c].T, bias=True))
        .logpdf(probe) for c in range(C)])  # fmt: skip
    np.testing.assert_allclose(logits_of(client, fitted(client, {"covariance": "per_class"})["id"], probe), expected,
                               rtol=1e-10, atol=1e-10)  # fmt: skip


def test_diagonal_is_gaussian_naive_bayes(client: TestClient) -> None:
    x, labels = rows(1, 600)
    probe, _ = rows(4, 50)
    nb = GaussianNB(var_smoothing=1e-3).fit(x, labels)
    detector = fitted(client, {"covariance": "diagonal", "ridge": float(nb.epsilon_)})
    np.testing.assert_allclose(logits_of(client, detector["id"], probe), nb.predict_joint_log_proba(probe),
                               rtol=1e-10, atol=1e-10)  # fmt: skip
    scored = client.post(f"/v1/detectors/{detector['id']}/score", json={"features": probe.tolist()}).json()
    assert scored["nearest_class"] == nb.predict(probe).tolist()  # argmin of the score = argmax of the logits


def test_an_evaluation_takes_the_generative_logits(client: TestClient) -> None:
    probe, truth = rows(5, 200)
    logits = logits_of(client, fitted(client, {"covariance": "per_class"})["id"], probe)
    evaluated = client.post("/v1/evaluations", json={"logits": logits.tolist(), "labels": truth.tolist(),
                                                     "metrics": ["accuracy"], "store": False})  # fmt: skip
    assert evaluated.status_code == 201, evaluated.text
    assert evaluated.json()["metrics"]["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == truth))


def test_logits_are_refused_where_no_generative_classifier_is(client: TestClient) -> None:
    for detector in (fitted(client, {"k": 5}, "knn"), fitted(client, {}, "relative_mahalanobis")):
        response = client.post(f"/v1/detectors/{detector['id']}/score",
                               json={"features": [[0.0] * D], "return_logits": True})  # fmt: skip
        assert_problem(response, 422, "return_logits")
    refused = client.post("/v1/detectors", json={"method": "relative_mahalanobis", "params": {"covariance": "diagonal"},
                                                 "features": [[0.0] * D] * 4, "labels": [0, 0, 1, 1]})  # fmt: skip
    assert_problem(refused, 422, "params.covariance")

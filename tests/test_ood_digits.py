"""The realistic check of mahalanobis.md §9 on scikit-learn's bundled digits (no download): digits 0–4
in-distribution (fit on even positions, test on odd ones), digits 5–9 as near-OOD, through the API."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    data = load_digits()
    inside = data.target <= 4
    x_in, y_in = data.data[inside], data.target[inside]
    return {"fit": x_in[0::2], "fit_labels": y_in[0::2], "test_in": x_in[1::2], "test_out": data.data[~inside]}


def separation(
    client: TestClient,
    fit_features: np.ndarray,
    labels: np.ndarray,
    test_in: np.ndarray,
    test_out: np.ndarray,
    **body: Any,
) -> dict[str, Any]:
    created = client.post(
        "/v1/detectors",
        json={"method": "mahalanobis", "features": fit_features.tolist(), "labels": labels.tolist(), **body},
    )
    assert created.status_code == 201, created.text
    result = client.post(
        "/v1/ood/evaluate",
        json={"detector_id": created.json()["id"], "features_in": test_in.tolist(), "features_out": test_out.tolist()},
    )
    assert result.status_code == 200, result.text
    return result.json()


@pytest.mark.parametrize(
    ("params", "auroc", "fpr95"),
    [
        ({}, 0.9267, 0.5491),  # pinvh, as scikit-learn's EmpiricalCovariance and the reference code
        ({"shrinkage": "ledoit_wolf"}, 0.9559, 0.2634),
        ({"shrinkage": "oas"}, 0.9548, 0.2623),
    ],
)
def test_raw_pixels_match_the_spec_table(
    client: TestClient, digits: dict[str, np.ndarray], params: dict[str, Any], auroc: float, fpr95: float
) -> None:
    out = separation(client, digits["fit"], digits["fit_labels"], digits["test_in"], digits["test_out"], params=params)
    assert out["auroc"] == pytest.approx(auroc, abs=1e-3)
    assert out["fpr_at_95_tpr"] == pytest.approx(fpr95, abs=1e-3)


def test_mahalanobis_on_hidden_features_beats_msp(client: TestClient, digits: dict[str, np.ndarray]) -> None:
    """Feature set B: the ReLU hidden layer of a small MLP. The spec's numbers depend on the BLAS and the
    scikit-learn version, so they are sanity ranges (MDS ≈ 0.949, MSP ≈ 0.931)."""
    mlp = MLPClassifier(hidden_layer_sizes=(32,), random_state=0, max_iter=500).fit(
        digits["fit"] / 16, digits["fit_labels"]
    )

    def hidden(x: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, (x / 16) @ mlp.coefs_[0] + mlp.intercepts_[0])

    def logits(x: np.ndarray) -> np.ndarray:
        return hidden(x) @ mlp.coefs_[1] + mlp.intercepts_[1]

    mds = separation(
        client, hidden(digits["fit"]), digits["fit_labels"], hidden(digits["test_in"]), hidden(digits["test_out"])
    )
    msp = {}
    for side in ("in", "out"):
        response = client.post(
            "/v1/ood/scores", json={"logits": logits(digits[f"test_{side}"]).tolist(), "methods": ["msp"]}
        )
        msp[side] = response.json()["scores"]["msp"]
    msp_out = client.post("/v1/ood/evaluate", json={"scores_in": msp["in"], "scores_out": msp["out"]}).json()
    vim = separation(
        client,
        hidden(digits["fit"]),
        digits["fit_labels"],
        hidden(digits["test_in"]),
        hidden(digits["test_out"]),
        method="vim",
        params={"weight": mlp.coefs_[1].T.tolist(), "bias": mlp.intercepts_[1].tolist(), "dim": 8},
    )
    assert 0.93 < vim["auroc"] < 0.99  # the spec's run: 0.9606
    assert 0.93 < mds["auroc"] < 0.98
    assert 0.88 < msp_out["auroc"] < 0.96
    assert mds["auroc"] > msp_out["auroc"]

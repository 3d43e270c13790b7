"""OOD separation metrics (mahalanobis.md §5.3–5.4, §11) and logit-based scores (§6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp, softmax

from app.core.ood_metrics import separation
from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem

# Example M1: ID confidences (higher = ID); the API takes outlier scores, so they are negated.
M1_ID = np.array([10, 9, 9, 8, 8, 8, 7, 7, 7, 7, 6, 6, 6, 5, 5, 4, 4, 3, 2, 1], dtype=float)
M1_OOD = np.array([8, 7, 5, 4, 3, 3, 2, 1, 1, 0], dtype=float)
M1 = {
    "auroc": 0.775,
    "aupr_in": 0.848045029683,
    "aupr_out": 0.637834138486,
    "fpr_at_95_tpr": 0.70,
    "fpr_at_95_tpr_ood_positive": 0.85,
    "detection_error": 0.275,
}
M1_TRAPEZOID = {"aupr_in": 0.864494126563, "aupr_out": 0.677371175523}


@pytest.mark.parametrize("integral", ["average_precision", "trapezoid"])
def test_m1_golden_values(integral: Any) -> None:
    got = separation(-M1_ID, -M1_OOD, integral)
    expected = {**M1, **(M1_TRAPEZOID if integral == "trapezoid" else {})}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_m2_uses_every_roc_point() -> None:
    """OpenOOD's drop_intermediate would report 1.0; every point gives the exact 2/3."""
    outlier_in = np.array([0, 1, 4], dtype=float)
    outlier_out = np.array([0, 1, *[2] * 8, *[3] * 4, *[4] * 6], dtype=float)
    got = separation(outlier_in, outlier_out)
    assert got["fpr_at_95_tpr_ood_positive"] == pytest.approx(2 / 3, abs=1e-12)
    assert got["auroc"] == pytest.approx(0.6833333333, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 40))
def test_invariances_and_the_mann_whitney_definition(seed: int, n_in: int, n_out: int) -> None:
    rng = np.random.default_rng(seed)
    o_in = rng.integers(0, 6, n_in).astype(float)  # many ties on purpose
    o_out = rng.integers(2, 8, n_out).astype(float)
    got = separation(o_in, o_out)
    pairs = (o_out[:, None] > o_in[None, :]).mean() + 0.5 * (o_out[:, None] == o_in[None, :]).mean()
    assert got["auroc"] == pytest.approx(pairs, abs=1e-12)
    assert separation(-o_in, -o_out)["auroc"] == pytest.approx(1 - got["auroc"], abs=1e-12)
    transformed = separation(np.exp(o_in / 3), np.exp(o_out / 3))  # strictly increasing map
    for key, value in got.items():
        assert transformed[key] == pytest.approx(value, abs=1e-12), key
    # FPR@95 with ID positive equals the OOD-positive routine on swapped sets
    swapped = separation(-o_out, -o_in)
    assert got["fpr_at_95_tpr"] == pytest.approx(swapped["fpr_at_95_tpr_ood_positive"], abs=1e-12)


def test_evaluate_endpoint(client: TestClient) -> None:
    body = {"scores_in": (-M1_ID).tolist(), "scores_out": (-M1_OOD).tolist()}
    response = client.post("/v1/ood/evaluate", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["n_in"] == 20 and out["n_out"] == 10 and out["aupr_integral"] == "average_precision"
    for key, value in M1.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    trapezoid = client.post("/v1/ood/evaluate", json={**body, "aupr": "trapezoid"}).json()
    assert trapezoid["aupr_in"] == pytest.approx(M1_TRAPEZOID["aupr_in"], abs=1e-12)


def oracle_scores(
    z: np.ndarray, temperature: float = 1.0, gamma: float = 0.1, m: int | None = None
) -> dict[str, np.ndarray]:
    p = softmax(z, axis=1)
    top = -np.sort(-p, axis=1)[:, : min(m or 100, z.shape[1])]
    return {
        "msp": -p.max(1),
        "max_logit": -z.max(1),
        "energy": -temperature * logsumexp(z / temperature, axis=1),
        "entropy": -(p * log_softmax(z, axis=1)).sum(1),
        "gen": (top**gamma * (1 - top) ** gamma).sum(1),
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logit_scores_match_the_oracle(client: TestClient, dtype: str) -> None:
    from caliper_client.wire import encode_tensor_object

    z = np.random.default_rng(0).normal(size=(50, 7)) * 3
    response = client.post("/v1/ood/scores", json={"logits": encode_tensor_object(z.astype(dtype))})
    assert response.status_code == 200, response.text
    expected = oracle_scores(z.astype(dtype).astype(np.float64))
    tol = 1e-9 if dtype == "float64" else 1e-4
    for name, values in expected.items():
        np.testing.assert_allclose(response.json()["scores"][name], values, rtol=tol, atol=tol, err_msg=name)
    custom = client.post(
        "/v1/ood/scores",
        json={
            "logits": z.tolist(),
            "methods": [
                {"name": "energy", "temperature": 2.0, "key": "energy_t2"},
                {"name": "gen", "gamma": 0.5, "m": 3},
            ],
        },
    ).json()
    np.testing.assert_allclose(custom["scores"]["energy_t2"], oracle_scores(z, temperature=2.0)["energy"], rtol=1e-9)
    np.testing.assert_allclose(custom["scores"]["gen"], oracle_scores(z, gamma=0.5, m=3)["gen"], rtol=1e-9)


def test_scores_separate_shifted_logits() -> None:
    """Confident (ID-like) logits score lower than flat (OOD-like) ones under every method."""
    rng = np.random.default_rng(1)
    confident = rng.normal(size=(200, 10))
    confident[np.arange(200), rng.integers(0, 10, 200)] += 6
    flat = rng.normal(size=(200, 10)) * 0.3
    from app.core.logit_scores import SCORES, scores_graph
    from app.core.runtime import default_cache

    specs = tuple(spec(name=name) for name, spec in SCORES.items())
    session = default_cache().get("test:ood:sep", lambda: scores_graph(specs, 10, np.dtype(np.float64)))
    for name, score_in, score_out in zip(
        [o.name for o in session.get_outputs()],
        session.run(None, {"logits": confident}),
        session.run(None, {"logits": flat}),
        strict=True,
    ):
        assert separation(score_in, score_out)["auroc"] > 0.95, name


BAD: list[tuple[str, str, dict[str, Any], str]] = [
    ("/v1/ood/evaluate", "empty_in", {"scores_in": [], "scores_out": [1.0]}, "scores_in"),
    ("/v1/ood/evaluate", "empty_out", {"scores_in": [1.0], "scores_out": []}, "scores_out"),
    ("/v1/ood/evaluate", "missing_out", {"scores_in": [1.0]}, "scores_out"),
    ("/v1/ood/evaluate", "two_dimensional", {"scores_in": [[1.0]], "scores_out": [1.0]}, "scores_in"),
    ("/v1/ood/evaluate", "ragged", {"scores_in": [[1.0], [1.0, 2.0]], "scores_out": [1.0]}, "scores_in"),
    ("/v1/ood/evaluate", "unknown_option", {"scores_in": [1.0], "scores_out": [2.0], "aupr": "magic"}, "aupr"),
    ("/v1/ood/scores", "unknown_method", {"logits": [[1.0, 2.0]], "methods": ["odin"]}, "methods"),
    (
        "/v1/ood/scores",
        "bad_temperature",
        {"logits": [[1.0, 2.0]], "methods": [{"name": "energy", "temperature": 0}]},
        "methods",
    ),
    ("/v1/ood/scores", "one_class", {"logits": [[1.0], [2.0]]}, "logits"),
    ("/v1/ood/scores", "missing_logits", {"methods": ["msp"]}, "logits"),
]


@pytest.mark.parametrize(("path", "body", "field"), [(c[0], c[2], c[3]) for c in BAD], ids=[c[1] for c in BAD])
def test_bad_ood_input_is_422(client: TestClient, path: str, body: dict[str, Any], field: str) -> None:
    assert_problem(client.post(path, json=body), 422, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_non_finite_scores_are_rejected(client: TestClient) -> None:
    raw = '{"scores_in": [1.0, NaN], "scores_out": [2.0]}'
    response = client.post("/v1/ood/evaluate", content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 422, "scores_in")

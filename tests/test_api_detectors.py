"""/v1/detectors and /v1/ood/evaluate with a detector, over the ASGI app."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient

from app.core.chunking import Chunking
from tests.conftest import count_rows, runtime_of
from tests.test_api_bad_input import assert_problem
from tests.test_mahalanobis import TEST, X, Y

MDS = [0.0, 127 / 12, 220 / 3, 1.25]
RMDS = [-127 / 139, 127 / 12, -161 / 417, -409 / 556]


def fit(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/detectors", json={"method": "mahalanobis", "features": X.tolist(), "labels": Y.tolist(), **body}
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize(("method", "expected"), [("mahalanobis", MDS), ("relative_mahalanobis", RMDS)])
def test_fit_and_score_match_the_golden_vector(client: TestClient, method: str, expected: list[float]) -> None:
    created = fit(client, method=method, model="m")
    assert created["classes"] == 2 and created["dim"] == 3 and created["fit_info"]["class_counts"] == [4, 4]
    scored = client.post(f"/v1/detectors/{created['id']}/score", json={"features": TEST.tolist()})
    assert scored.status_code == 200, scored.text
    np.testing.assert_allclose(scored.json()["scores"], expected, atol=1e-12)
    assert scored.json()["nearest_class"] == [0, 0, 0, 1]
    assert client.get(f"/v1/detectors/{created['id']}").json() == created


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"shrinkage": "oas"}, [0, 15.375, 61.5, 1.5]),
        ({"shrinkage": "ledoit_wolf"}, [0, 15.057504425, 61.330167290, 1.476813708]),
        ({"shrinkage": 1.0}, [0, 15.375, 61.5, 1.5]),
        ({"inverse": "solve"}, MDS),
    ],
)
def test_shrinkage_and_inverse_options(client: TestClient, params: dict[str, Any], expected: list[float]) -> None:
    created = fit(client, params=params)
    scores = client.post(f"/v1/detectors/{created['id']}/score", json={"features": TEST.tolist()}).json()["scores"]
    np.testing.assert_allclose(scores, expected, atol=1e-8)


def test_streamed_fit_equals_one_shot(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 5)) + 20
    labels = rng.integers(0, 3, 300)
    body = {
        "method": "relative_mahalanobis",
        "features": features.tolist(),
        "labels": labels.tolist(),
        "params": {"shrinkage": "ledoit_wolf"},
    }
    monkeypatch.setattr(runtime_of(client), "chunking", Chunking(rows=10**6, bytes=1 << 40))  # one chunk
    one_shot = client.post("/v1/detectors", json=body).json()
    monkeypatch.setattr(runtime_of(client), "chunking", Chunking(bytes=7 * 40))  # 7 rows per chunk
    streamed = client.post("/v1/detectors", json=body).json()
    test = {"features": (rng.normal(size=(50, 5)) + 20).tolist()}
    a = client.post(f"/v1/detectors/{one_shot['id']}/score", json=test).json()["scores"]
    b = client.post(f"/v1/detectors/{streamed['id']}/score", json=test).json()["scores"]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_ood_evaluate_with_a_detector(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    means = np.array([[0.0] * 4, [5.0] * 4])
    labels = rng.integers(0, 2, 400)
    features = means[labels] + rng.normal(size=(400, 4))
    created = fit(client, features=features.tolist(), labels=labels.tolist())
    inside = means[rng.integers(0, 2, 100)] + rng.normal(size=(100, 4))
    outside = rng.normal(size=(100, 4)) + np.array([10.0, -5.0, 0.0, 12.0])
    response = client.post(
        "/v1/ood/evaluate",
        json={"detector_id": created["id"], "features_in": inside.tolist(), "features_out": outside.tolist()},
    )
    assert response.status_code == 200, response.text
    assert response.json()["auroc"] > 0.99 and response.json()["n_in"] == 100


def test_list_and_delete(client: TestClient) -> None:
    first, second = fit(client, model="a"), fit(client, model="b")
    assert [d["id"] for d in client.get("/v1/detectors").json()["items"]] == [second["id"], first["id"]]
    assert [d["id"] for d in client.get("/v1/detectors", params={"model": "a"}).json()["items"]] == [first["id"]]
    assert client.delete(f"/v1/detectors/{first['id']}").status_code == 204
    assert_problem(client.get(f"/v1/detectors/{first['id']}"), 404)
    assert_problem(client.delete(f"/v1/detectors/{first['id']}"), 404)


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_delete_evicts_what_scoring_cached(client: TestClient, method: str) -> None:
    """No module-global caches: a deleted detector's decoded arrays and scoring sessions are let go."""
    params = {"k": 2} if method == "knn" else {}
    created = fit(client, method=method, params=params)
    assert client.post(f"/v1/detectors/{created['id']}/score", json={"features": TEST.tolist()}).status_code == 200
    resources = client.app.state.resources  # type: ignore[attr-defined]
    held = lambda: [k for k in resources.detectors._fitted._items if created["id"] in k]  # noqa: E731
    sessions = lambda: [k for k in resources.runtime._sessions._items if created["id"] in k]  # noqa: E731
    assert held() or sessions()  # what the first score cached, so the check below can fail
    assert client.delete(f"/v1/detectors/{created['id']}").status_code == 204
    assert held() == [] and sessions() == []


BAD_FITS: list[tuple[str, dict[str, Any], str]] = [
    ("fewer_rows_than_classes", {"features": [[1.0, 2.0]], "labels": [3]}, "features"),
    ("missing_class", {"features": X.tolist(), "labels": [0, 0, 0, 0, 2, 2, 2, 2]}, "labels"),
    ("per_class_not_built", {"params": {"covariance": "per_class"}}, "params"),
    ("unknown_option", {"params": {"shrinkage": "magic"}}, "params"),
    ("alpha_out_of_range", {"params": {"shrinkage": 1.5}}, "params"),
    ("unknown_method", {"method": "odin"}, "method"),
    ("vim_without_head", {"method": "vim"}, "params.weight"),
    ("knn_k_too_large", {"method": "knn", "params": {"k": 9}}, "params.k"),
    ("knn_unknown_param", {"method": "knn", "params": {"shrinkage": "oas"}}, "params"),
    ("labels_mismatch", {"labels": [0, 1]}, "labels"),
    ("one_dimensional_features", {"features": [1.0, 2.0], "labels": [0, 1]}, "features"),
    (
        "singular_with_solve",
        {"features": np.column_stack([X, X[:, 0]]).tolist(), "params": {"inverse": "solve"}},
        "params.inverse",
    ),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD_FITS], ids=[c[0] for c in BAD_FITS])
def test_bad_fits_are_422_and_store_nothing(client: TestClient, body: dict[str, Any], field: str) -> None:
    base = {"method": "mahalanobis", "features": X.tolist(), "labels": Y.tolist()}
    assert_problem(client.post("/v1/detectors", json={**base, **body}), 422, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_bad_scoring_input(client: TestClient) -> None:
    created = fit(client)
    wrong = client.post(f"/v1/detectors/{created['id']}/score", json={"features": [[1.0, 2.0]]})
    assert_problem(wrong, 422, "features")
    assert "D = 2" in wrong.json()["detail"] and "D = 3" in wrong.json()["detail"]
    raw = '{"features": [[1.0, NaN, 2.0]]}'
    nan = client.post(f"/v1/detectors/{created['id']}/score", content=raw, headers={"content-type": "application/json"})
    assert_problem(nan, 422, "features")
    assert_problem(client.post("/v1/detectors/nope/score", json={"features": TEST.tolist()}), 404)
    both = client.post(
        "/v1/ood/evaluate", json={"detector_id": created["id"], "scores_in": [1.0], "features_out": TEST.tolist()}
    )
    assert_problem(both, 422, "scores_in")
    assert_problem(
        client.post("/v1/ood/evaluate", json={"detector_id": created["id"], "features_in": TEST.tolist()}),
        422,
        "features_out",
    )


@pytest.mark.parametrize(
    ("as_float32", "precision", "rtol"),
    [
        (False, "auto", 1e-9),  # JSON lists are float64, and float64 stays float64
        (True, "float64", 1e-9),
        (True, "auto", 1e-5),  # float32 tensors are searched in float32
        (False, "float32", 1e-5),
    ],
)
def test_knn_matches_a_brute_force_oracle(client: TestClient, as_float32: bool, precision: str, rtol: float) -> None:
    """The k-th smallest distance is continuous in the inputs, so it is compared at the dtype's rtol; the
    nearest class is not, so the data keeps every nearest distance ≫ rtol from the second nearest."""
    rng = np.random.default_rng(3)
    fit_features = rng.normal(size=(120, 6)) + 1
    labels = rng.integers(0, 3, 120)
    test = rng.normal(size=(30, 6))
    if as_float32:
        fit_features, test = fit_features.astype(np.float32), test.astype(np.float32)

    def wire(a: np.ndarray) -> Any:
        return encode_tensor_object(a) if as_float32 else a.tolist()

    body = {"method": "knn", "features": wire(fit_features), "labels": labels.tolist()}
    created = client.post("/v1/detectors", json={**body, "params": {"k": 5, "precision": precision}})
    assert created.status_code == 201, created.text
    out = client.post(f"/v1/detectors/{created.json()['id']}/score", json={"features": wire(test)}).json()
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    x, s = unit(test.astype(np.float64)), unit(fit_features.astype(np.float64))
    distances = np.sqrt(((x[:, None, :] - s[None, :, :]) ** 2).sum(axis=2))
    ordered = np.sort(distances, axis=1)
    assert np.min(ordered[:, 1] - ordered[:, 0]) > 100 * rtol
    np.testing.assert_allclose(out["scores"], ordered[:, 4], rtol=rtol)
    np.testing.assert_array_equal(out["nearest_class"], labels[np.argmin(distances, axis=1)])


def test_vim_matches_the_formula(client: TestClient) -> None:
    rng = np.random.default_rng(4)
    weight, bias = rng.normal(size=(4, 8)), rng.normal(size=4)
    fit_features = rng.normal(size=(200, 8)) * np.linspace(3, 0.2, 8)
    created = client.post(
        "/v1/detectors",
        json={
            "method": "vim",
            "features": fit_features.tolist(),
            "params": {"weight": weight.tolist(), "bias": bias.tolist(), "dim": 3},
        },
    )
    assert created.status_code == 201, created.text
    test = rng.normal(size=(25, 8)) * 2
    out = client.post(f"/v1/detectors/{created.json()['id']}/score", json={"features": test.tolist()}).json()
    # independent oracle of mahalanobis.md §6: u = −W⁺b, R = eigenvectors of cov(x − u) beyond the top d
    u = -np.linalg.pinv(weight) @ bias
    centred = fit_features - u
    values, vectors = np.linalg.eigh(
        np.cov(centred.T, bias=True, aweights=None) + np.outer(centred.mean(0), centred.mean(0))
    )
    residual = vectors[:, np.argsort(values)[::-1][3:]]
    alpha = (fit_features @ weight.T + bias).max(1).mean() / np.linalg.norm(centred @ residual, axis=1).mean()
    logits = test @ weight.T + bias
    expected = alpha * np.linalg.norm((test - u) @ residual, axis=1) - np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-9, atol=1e-9)
    assert out["nearest_class"] == logits.argmax(1).tolist()
    bad = client.post(
        "/v1/detectors",
        json={
            "method": "vim",
            "features": fit_features.tolist(),
            "params": {"weight": weight[:, :5].tolist(), "bias": bias.tolist(), "dim": 3},
        },
    )
    assert_problem(bad, 422, "params.weight")
    too_wide = client.post(
        "/v1/detectors",
        json={
            "method": "vim",
            "features": fit_features.tolist(),
            "params": {"weight": weight.tolist(), "bias": bias.tolist(), "dim": 8},
        },
    )
    assert_problem(too_wide, 422, "params.dim")


def per_class_oracle(fit_x: np.ndarray, labels: np.ndarray, test: np.ndarray, ridge: float) -> np.ndarray:
    """min_c [d_c² + log|Σ_c| − 2 log π_c] with Σ_c = W_c/n_c + ridge·I, straight from the definition."""
    out = []
    for c in range(labels.max() + 1):
        rows = fit_x[labels == c]
        sigma = np.cov(rows.T, bias=True) + ridge * np.eye(fit_x.shape[1])
        diff = test - rows.mean(0)
        d2 = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(sigma), diff)
        out.append(d2 + np.linalg.slogdet(sigma)[1] - 2 * np.log(len(rows) / len(fit_x)))
    return np.min(out, axis=0)


@pytest.mark.parametrize(("chunk_rows", "normalize"), [(None, False), (13, False), (13, True)])
def test_per_class_covariance_matches_the_definition(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, chunk_rows: int | None, normalize: bool
) -> None:
    """Scored as fitted: with `normalize`, fit and scored rows are both L2-normalised first."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 240)
    fit_x = rng.normal(size=(240, 4)) * (1 + labels[:, None]) + labels[:, None] * 3 + 50
    one_chunk = Chunking(rows=10**6, bytes=1 << 40)
    chunking = one_chunk if chunk_rows is None else Chunking(bytes=chunk_rows * 32)
    monkeypatch.setattr(runtime_of(client), "chunking", chunking)
    created = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "features": fit_x.tolist(),
            "labels": labels.tolist(),
            "params": {"covariance": "per_class", "ridge": 0.01, "normalize": normalize},
        },
    )
    assert created.status_code == 201, created.text
    test = rng.normal(size=(40, 4)) * 3 + 52
    out = client.post(f"/v1/detectors/{created.json()['id']}/score", json={"features": test.tolist()}).json()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x  # noqa: E731
    want = per_class_oracle(unit(fit_x), labels, unit(test), 0.01)
    np.testing.assert_allclose(out["scores"], want, rtol=1e-8, atol=1e-8)


def test_per_class_refuses_singular_and_tiny_classes(client: TestClient) -> None:
    singular = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "features": X.tolist(),
            "labels": Y.tolist(),
            "params": {"covariance": "per_class"},
        },
    )
    assert_problem(singular, 422, "params.covariance")  # class 1 has rank 2 in the golden data (spec §10)
    assert "singular" in singular.json()["detail"]
    ridged = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "features": X.tolist(),
            "labels": Y.tolist(),
            "params": {"covariance": "per_class", "ridge": 0.1},
        },
    )
    assert ridged.status_code == 201
    one_row = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "features": X.tolist(),
            "labels": [0, 0, 0, 0, 0, 0, 0, 1],
            "params": {"covariance": "per_class", "ridge": 0.1},
        },
    )
    assert_problem(one_row, 422, "labels")
    assert sum(1 for _ in client.get("/v1/detectors").json()["items"]) == 1


def ensemble_data(seed: int = 8) -> dict[str, Any]:
    """Two layers: `noisy` separates ID from OOD badly, `clean` well."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    centres = np.array([[0.0] * 3, [4.0] * 3])

    def layers(rows: np.ndarray, shift: float) -> dict[str, list[list[float]]]:
        clean = centres[rows] + rng.normal(size=(len(rows), 3)) + shift
        noisy = rng.normal(size=(len(rows), 5)) * 3 + shift * 0.05
        return {"clean": clean.tolist(), "noisy": noisy.tolist()}

    return {
        "fit": layers(labels, 0.0),
        "labels": labels.tolist(),
        "valid_in": layers(rng.integers(0, 2, 100), 0.0),
        "valid_out": layers(rng.integers(0, 2, 100), 6.0),
        "test_in": layers(rng.integers(0, 2, 100), 0.0),
        "test_out": layers(rng.integers(0, 2, 100), 6.0),
    }


def test_feature_ensemble_weights_given_and_fitted(client: TestClient) -> None:
    data = ensemble_data()
    given = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "features": data["fit"],
            "labels": data["labels"],
            "params": {"layer_weights": {"clean": 1.0, "noisy": 0.0}},
        },
    )
    assert given.status_code == 201, given.text
    assert given.json()["params"]["layers"] == ["clean", "noisy"] and given.json()["dim"] == 8
    # with weight 0 on `noisy`, the ensemble equals the `clean` layer alone
    clean_only = client.post(
        "/v1/detectors", json={"method": "mahalanobis", "features": data["fit"]["clean"], "labels": data["labels"]}
    ).json()
    a = client.post(f"/v1/detectors/{given.json()['id']}/score", json={"features": data["test_out"]}).json()
    b = client.post(f"/v1/detectors/{clean_only['id']}/score", json={"features": data["test_out"]["clean"]}).json()
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-12)
    fitted = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "features": data["fit"],
            "labels": data["labels"],
            "validation": {"features_in": data["valid_in"], "features_out": data["valid_out"]},
        },
    )
    assert fitted.status_code == 201, fitted.text
    weights = fitted.json()["params"]["layer_weights"]
    assert weights["clean"] > abs(weights["noisy"])  # logistic regression prefers the informative layer
    equal = client.post(
        "/v1/detectors", json={"method": "mahalanobis", "features": data["fit"], "labels": data["labels"]}
    ).json()
    assert equal["params"]["layer_weights"] == {"clean": 1.0, "noisy": 1.0}
    separation = {}
    for name, detector in (("fitted", fitted.json()), ("equal", equal)):
        out = client.post(
            "/v1/ood/evaluate",
            json={"detector_id": detector["id"], "features_in": data["test_in"], "features_out": data["test_out"]},
        )
        assert out.status_code == 200, out.text
        separation[name] = out.json()["auroc"]
    assert separation["fitted"] >= separation["equal"] - 1e-9 and separation["fitted"] > 0.95


def test_bad_ensembles(client: TestClient) -> None:
    data = ensemble_data(9)
    base = {"method": "mahalanobis", "features": data["fit"], "labels": data["labels"]}
    assert_problem(
        client.post("/v1/detectors", json={**base, "params": {"layer_weights": {"clean": 1.0}}}),
        422,
        "params.layer_weights",
    )
    assert_problem(client.post("/v1/detectors", json={**base, "method": "knn"}), 422, "features")
    created = client.post("/v1/detectors", json=base).json()
    wrong = client.post(f"/v1/detectors/{created['id']}/score", json={"features": {"clean": data["test_in"]["clean"]}})
    assert_problem(wrong, 422, "features")
    flat = client.post(f"/v1/detectors/{created['id']}/score", json={"features": data["test_in"]["clean"]})
    assert_problem(flat, 422, "features")


def test_ensemble_layers_as_multipart_parts(client: TestClient) -> None:
    import io
    import json

    data = ensemble_data(10)

    def npy(values: Any) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(values))
        return buffer.getvalue()

    files = {
        "request": (None, json.dumps({"method": "mahalanobis"}), "application/json"),
        "features.clean": ("c.npy", npy(data["fit"]["clean"])),
        "features.noisy": ("n.npy", npy(data["fit"]["noisy"])),
        "labels": ("y.npy", npy(data["labels"])),
    }
    created = client.post("/v1/detectors", files=files)
    assert created.status_code == 201, created.text
    assert created.json()["params"]["layers"] == ["clean", "noisy"]

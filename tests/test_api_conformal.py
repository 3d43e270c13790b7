"""/v1/conformal over the ASGI app (api.md, "Guarantees"): fit, store, list with filters, predict with
coverage, .npz, the standalone ONNX graph equal to /predict for every method (with and without Mondrian
and a calibrator), jobs, and bad input (422 naming the field, nothing stored; unknown ids 404)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient

from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem
from tests.test_conformal_core import METHODS, oracle_quantile, oracle_scores, sampled_labels

N, C = 400, 5


def data(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, C)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return z, sampled_labels(rng, p)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit(client: TestClient, **body: Any) -> dict[str, Any]:
    z, labels = data()
    response = client.post("/v1/conformal", json={"logits": z.tolist(), "labels": labels.tolist(), **body})
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_fit_answers_the_contracts_fields_and_is_stored(client: TestClient) -> None:
    z, labels = data()
    created = fit(client, method="raps", params={"alpha": 0.1, "lambda": 0.05, "k_reg": 2}, model="m", tags={"a": "b"})
    scores = oracle_scores(softmax(z), "raps", 0.05, 2)[np.arange(N), labels]
    assert created["quantile"] == pytest.approx(oracle_quantile(scores, 0.1), rel=1e-12)
    assert created["params"] == {"alpha": 0.1, "mondrian": False, "lambda": 0.05, "k_reg": 2}
    assert (created["method"], created["n_calibration"], created["classes"]) == ("raps", N, C)
    assert created["infinite"] is False and created["class_quantiles"] is None and created["calibrator_id"] is None
    assert created["fit_report"]["coverage"] >= 0.9 - 1 / N and created["fit_report"]["mean_set_size"] > 1
    assert created["created_at"].endswith("Z") and created["model"] == "m" and created["tags"] == {"a": "b"}
    assert client.get(f"/v1/conformal/{created['id']}").json() == created


def test_mondrian_and_an_infinite_quantile_are_reported(client: TestClient) -> None:
    created = fit(client, method="lac", params={"alpha": 0.01, "mondrian": True})
    assert created["quantile"] is None and len(created["class_quantiles"]) == C
    tiny = client.post("/v1/conformal", json={"method": "aps", "logits": [[1.0, 0.0]] * 5, "labels": [0] * 5,
                                              "params": {"alpha": 0.1}}).json()  # fmt: skip
    assert tiny["quantile"] is None and tiny["infinite"] is True  # k = ⌈6 · 0.9⌉ = 6 > 5
    sets = client.post(f"/v1/conformal/{tiny['id']}/predict", json={"logits": [[0.0, 3.0]]}).json()
    assert sets == {"sets": [[0, 1]], "set_size": [2], "coverage": None, "mean_set_size": None,
                    "class_coverage": None, "size_stratified_coverage": None}  # fmt: skip


def test_predict_gives_the_oracles_sets_and_coverage(client: TestClient) -> None:
    created = fit(client, method="aps", params={"alpha": 0.2})
    fresh, labels = data(seed=9, n=300)
    answer = client.post(f"/v1/conformal/{created['id']}/predict",
                         json={"logits": fresh.tolist(), "labels": labels.tolist()}).json()  # fmt: skip
    scores = oracle_scores(softmax(fresh), "aps")
    member = scores <= created["quantile"]
    far = np.abs(scores - created["quantile"]) > 1e-9
    got = np.zeros((300, C), bool)
    for row, classes in enumerate(answer["sets"]):
        assert classes == sorted(classes)
        got[row, classes] = True
    assert (got[far] == member[far]).all() and answer["set_size"] == got.sum(1).tolist()
    covered = got[np.arange(300), labels]
    assert answer["coverage"] == pytest.approx(covered.mean()) and answer["mean_set_size"] == pytest.approx(
        got.sum(1).mean()
    )
    for c in range(C):
        assert answer["class_coverage"][c] == pytest.approx(covered[labels == c].mean())
    sizes = got.sum(1)
    assert answer["size_stratified_coverage"] == {
        str(s): pytest.approx(covered[sizes == s].mean()) for s in np.unique(sizes)
    }
    npz = client.post(f"/v1/conformal/{created['id']}/predict", json={"logits": fresh.tolist()},
                      headers={"Accept": "application/x-npz"})  # fmt: skip
    arrays = np.load(io.BytesIO(npz.content))
    np.testing.assert_array_equal(arrays["prediction_set"], got)
    assert arrays["prediction_set"].dtype == np.bool_ and arrays["set_size"].tolist() == answer["set_size"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mondrian", [False, True])
@pytest.mark.parametrize("calibrated", [False, True])
def test_the_onnx_export_gives_the_sets_predict_gives(
    client: TestClient, method: str, mondrian: bool, calibrated: bool
) -> None:
    z, labels = data()
    extra: dict[str, Any] = {}
    if calibrated:
        calibrator = client.post("/v1/calibrators", json={"method": "temperature", "logits": z.tolist(),
                                                          "labels": labels.tolist()}).json()  # fmt: skip
        extra["calibrator_id"] = calibrator["id"]
    created = fit(client, method=method, params={"alpha": 0.15, "mondrian": mondrian}, **extra)
    fresh, _ = data(seed=11, n=200)
    fresh = fresh.astype(np.float32)
    served = client.post(f"/v1/conformal/{created['id']}/predict", json={"logits": fresh.tolist()},
                         headers={"Accept": "application/x-npz"})  # fmt: skip
    expected = np.load(io.BytesIO(served.content))
    model = client.get(f"/v1/conformal/{created['id']}/onnx").content
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    sets, sizes = session.run(["prediction_set", "set_size"], {"logits": fresh})
    assert sets.dtype == np.bool_ and sizes.dtype == np.int64
    np.testing.assert_array_equal(sets, expected["prediction_set"])  # the same graph: bit for bit
    np.testing.assert_array_equal(sizes, expected["set_size"])


def test_a_calibrator_ranks_its_probabilities_and_given_probabilities_are_used_as_they_are(client: TestClient) -> None:
    z, labels = data()
    calibrator = client.post("/v1/calibrators", json={"method": "temperature", "logits": z.tolist(),
                                                      "labels": labels.tolist()}).json()  # fmt: skip
    temperature = calibrator["fitted"]["temperature"]
    created = fit(client, method="lac", calibrator_id=calibrator["id"], params={"alpha": 0.1})
    scores = oracle_scores(softmax(z / temperature), "lac")[np.arange(N), labels]
    assert created["calibrator_id"] == calibrator["id"]
    assert created["quantile"] == pytest.approx(oracle_quantile(scores, 0.1), rel=1e-9)
    fresh, _ = data(seed=5, n=50)
    p = softmax(fresh / temperature)
    by_logits = client.post(f"/v1/conformal/{created['id']}/predict", json={"logits": fresh.tolist()}).json()
    by_probabilities = client.post(f"/v1/conformal/{created['id']}/predict", json={"probabilities": p.tolist()}).json()
    far = np.abs(1 - p - created["quantile"]).min(1) > 1e-9
    assert [s for s, keep in zip(by_logits["sets"], far, strict=True) if keep] == [
        s for s, keep in zip(by_probabilities["sets"], far, strict=True) if keep
    ]


def test_listing_filters_by_model_method_and_tag_and_delete_removes(client: TestClient) -> None:
    a = fit(client, method="lac", model="m1", tags={"env": "prod"})
    b = fit(client, method="aps", model="m2", tags={"env": "dev"})
    c = fit(client, method="aps", model="m1")

    def ids(**query: Any) -> list[str]:
        return [item["id"] for item in client.get("/v1/conformal", params=query).json()["items"]]

    assert ids() == [c["id"], b["id"], a["id"]]
    assert ids(model="m1") == [c["id"], a["id"]] and ids(method="aps") == [c["id"], b["id"]]
    assert ids(tag="env:prod") == [a["id"]] and ids(tag="env") == [b["id"], a["id"]] and ids(tag="env:qa") == []
    assert client.delete(f"/v1/conformal/{a['id']}").status_code == 204
    assert client.get(f"/v1/conformal/{a['id']}").status_code == 404
    assert client.post(f"/v1/conformal/{a['id']}/predict", json={"logits": [[0.0] * C]}).status_code == 404
    assert client.get(f"/v1/conformal/{a['id']}/onnx").status_code == 404


def test_a_fit_runs_as_a_job(client: TestClient) -> None:
    z, labels = data()
    response = client.post("/v1/conformal", json={"method": "lac", "logits": z.tolist(), "labels": labels.tolist()},
                           headers={"Prefer": "respond-async"})  # fmt: skip
    assert response.status_code == 202, response.text
    job = client.app.state.resources.jobs.wait(response.json()["id"], 60)  # type: ignore[attr-defined]
    assert job.state == "succeeded" and job.kind == "conformal" and job.result is not None
    assert client.get(f"/v1/conformal/{job.result['id']}").json()["n_calibration"] == N


def _body(**overrides: Any) -> dict[str, Any]:
    z, labels = data()
    return {"method": "raps", "logits": z.tolist(), "labels": labels.tolist(), **overrides}


BAD_FITS = [
    ("alpha 0", _body(params={"alpha": 0}), "params.alpha"),
    ("alpha 1", _body(params={"alpha": 1}), "params.alpha"),
    ("alpha above 1", _body(params={"alpha": 1.5}), "params.alpha"),
    ("negative lambda", _body(params={"lambda": -0.1}), "params.lambda"),
    ("fractional k_reg", _body(params={"k_reg": 1.5}), "params.k_reg"),
    ("string k_reg", _body(params={"k_reg": "1"}), "params.k_reg"),
    ("negative k_reg", _body(params={"k_reg": -1}), "params.k_reg"),
    ("unknown param", _body(params={"beta": 1}), "params.beta"),
    ("unknown method", _body(method="naive"), "method"),
    ("label out of range", _body(labels=[C] * N), "labels"),
    ("labels of another length", _body(labels=[0] * (N - 1)), "labels"),
    ("no labels", _body(labels=None), "labels"),
    ("binary logits", _body(logits=[0.5] * N, labels=[0, 1] * (N // 2)), "logits"),
    ("NaN logits", _body(logits=encode_tensor_object(np.full((N, C), np.nan))), "logits"),
    ("both inputs", _body(probabilities=[[1 / C] * C] * N), "logits"),
    ("not distributions", {"method": "lac", "probabilities": [[0.5] * C] * N, "labels": [0] * N}, "probabilities"),
    ("calibrator with probabilities",
     {"method": "lac", "probabilities": [[1 / C] * C] * N, "labels": [0] * N, "calibrator_id": "x"}, "calibrator_id"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD_FITS], ids=[c[0] for c in BAD_FITS])
def test_bad_fits_are_422s_naming_the_field_and_store_nothing(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    before = count_rows(client.app)  # type: ignore[arg-type]
    assert_problem(client.post("/v1/conformal", json=body), 422, field)
    assert count_rows(client.app) == before  # type: ignore[arg-type]


def test_class_counts_must_match_the_calibrator_and_the_predictor(client: TestClient) -> None:
    z, labels = data()
    calibrator = client.post("/v1/calibrators", json={"method": "temperature", "logits": z[:, :3].tolist(),
                                                      "labels": np.minimum(labels, 2).tolist()}).json()  # fmt: skip
    before = count_rows(client.app)  # type: ignore[arg-type]
    assert_problem(client.post("/v1/conformal", json=_body(calibrator_id=calibrator["id"])), 422, "logits")
    assert client.post("/v1/conformal", json=_body(calibrator_id="nope")).status_code == 404
    assert count_rows(client.app) == before  # type: ignore[arg-type]
    created = fit(client, method="lac")
    assert_problem(client.post(f"/v1/conformal/{created['id']}/predict", json={"logits": [[0.0] * 3]}), 422, "logits")
    bad_labels = {"logits": [[0.0] * C], "labels": [C]}
    assert_problem(client.post(f"/v1/conformal/{created['id']}/predict", json=bad_labels), 422, "labels")
    assert client.post("/v1/conformal/nope/predict", json={"logits": [[0.0] * C]}).status_code == 404


def test_an_evaluation_with_a_conformal_head_reports_coverage_and_gates_read_its_direction(client: TestClient) -> None:
    """conformal_coverage (higher is better) and conformal_mean_set_size (lower is better) are metrics of
    the evaluation, equal to /predict's on the same rows; a gate tolerates a coverage gain and refuses a
    loss, in the metric's declared direction."""
    conformal = fit(client, method="aps", params={"alpha": 0.1})
    fresh, labels = data(seed=21, n=300)
    expected = client.post(f"/v1/conformal/{conformal['id']}/predict",
                           json={"logits": fresh.tolist(), "labels": labels.tolist()}).json()  # fmt: skip
    body = {
        "logits": fresh.tolist(),
        "labels": labels.tolist(),
        "metrics": ["accuracy"],
        "conformal_id": conformal["id"],
    }
    good = client.post("/v1/evaluations", json=body).json()
    assert good["metrics"]["conformal_coverage"] == pytest.approx(expected["coverage"], rel=1e-12)
    assert good["metrics"]["conformal_mean_set_size"] == pytest.approx(expected["mean_set_size"], rel=1e-12)
    shuffled = np.random.default_rng(0).permutation(labels)  # wrong labels: far lower coverage
    bad = client.post("/v1/evaluations", json={**body, "labels": shuffled.tolist()}).json()
    assert bad["metrics"]["conformal_coverage"] < good["metrics"]["conformal_coverage"] - 0.1

    def verdict(candidate: str, baseline: str) -> str:
        rule = {"metric": "conformal_coverage", "op": "max_decrease_abs", "value": 0.01}
        gate = client.post("/v1/gates", json={"candidate": candidate, "baseline": baseline, "rules": [rule]})
        assert gate.status_code == 201, gate.text
        return str(gate.json()["verdict"])

    assert verdict(good["id"], bad["id"]) == "pass" and verdict(bad["id"], good["id"]) == "fail"
    log_odds, binary_labels = data()[0][:, 0], data()[1] % 2  # binary [N] log-odds: the problem [0, z]
    two_class = {"logits": np.c_[np.zeros(N), log_odds].tolist(), "labels": binary_labels.tolist()}
    binary = client.post("/v1/conformal", json={"method": "lac", **two_class}).json()
    one_column = {"logits": log_odds.tolist(), "labels": binary_labels.tolist(), "metrics": ["accuracy"]}
    as_binary = client.post("/v1/evaluations", json={**one_column, "conformal_id": binary["id"]})
    assert as_binary.status_code == 201, as_binary.text
    assert as_binary.json()["metrics"]["conformal_coverage"] == pytest.approx(
        binary["fit_report"]["coverage"], rel=1e-12
    )
    no_labels = client.post("/v1/evaluations", json={"logits": fresh.tolist(), "targets": softmax(fresh).tolist(),
                                                     "conformal_id": conformal["id"]})  # fmt: skip
    assert_problem(no_labels, 422, "conformal_id")


def test_a_model_evaluation_with_a_conformal_head_folds_coverage_over_its_batches(client: TestClient) -> None:
    from tests import onnx_models

    model_bytes, weights = onnx_models.mlp(d=6, hidden=5, classes=C, dtype=np.float64, seed=2)
    model = client.post("/v1/models", files={"file": ("m.onnx", model_bytes, "application/octet-stream")},
                        data={"request": '{"name": "mlp"}'}).json()  # fmt: skip
    rng = np.random.default_rng(3)
    x, x_new = rng.normal(size=(300, 6)), rng.normal(size=(200, 6))
    z, z_new = weights.forward(x)[0], weights.forward(x_new)[0]
    labels, new_labels = sampled_labels(rng, softmax(z)), sampled_labels(rng, softmax(z_new))
    from_model = {"model_id": model["id"], "inputs": {"x": x.tolist()}, "labels": labels.tolist()}
    conformal = client.post("/v1/conformal", json={"method": "raps", **from_model}).json()
    evaluated = client.post(f"/v1/models/{model['id']}/evaluations", json={
        "inputs": {"x": x_new.tolist()}, "labels": new_labels.tolist(), "conformal_id": conformal["id"]})  # fmt: skip
    assert evaluated.status_code == 201, evaluated.text
    expected = client.post(f"/v1/conformal/{conformal['id']}/predict",
                           json={"logits": z_new.tolist(), "labels": new_labels.tolist()}).json()  # fmt: skip
    assert evaluated.json()["metrics"]["conformal_coverage"] == pytest.approx(expected["coverage"], rel=1e-12)
    assert evaluated.json()["metrics"]["conformal_mean_set_size"] == pytest.approx(expected["mean_set_size"], rel=1e-12)

"""Guarantees served with a model (api.md, "Guarantees"): `conformal_id` on predict, the composed export and
pipelines adds `prediction_set` (BOOL) and `set_size`; a detector fitted with a calibration set adds
`ood_p_value` to the export. The export equals `/predict`, `/v1/conformal/{id}/predict` and the detector's
`/score` on fresh rows, and a pipeline with calibrator, detector and conformal head serves all three
through tritonclient."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient

from tests.test_api_bad_input import assert_problem
from tests.test_api_models import upload
from tests.test_export import make_data, probe, session_outputs
from tests.test_pipelines import deploy


def heads_of(client: TestClient, model_id: str, x: np.ndarray, labels: np.ndarray, method: str) -> dict[str, str]:
    """A calibrator, a detector with a calibration set and a conformal predictor, from the model's outputs:
    the calibrator on the first third, the detector and the conformal sets on the others."""
    third = len(x) // 3
    fit, calibrate = slice(0, third), slice(third, 2 * third)
    inputs = lambda rows: {"x": x[rows].tolist()}  # noqa: E731
    fit_body = {"method": "temperature", "model_id": model_id, "inputs": inputs(fit), "labels": labels[fit].tolist()}
    calibrator = client.post("/v1/calibrators", json=fit_body)
    detector = client.post("/v1/detectors", json={
        "method": "mahalanobis", "params": {"ridge": 0.1}, "model_id": model_id, "inputs": inputs(fit),
        "labels": labels[fit].tolist(), "calibration": {"inputs": inputs(calibrate)}})  # fmt: skip
    conformal = client.post("/v1/conformal", json={
        "method": method, "model_id": model_id, "inputs": inputs(calibrate), "labels": labels[calibrate].tolist(),
        "calibrator_id": calibrator.json()["id"], "params": {"alpha": 0.2}})  # fmt: skip
    for response in (calibrator, detector, conformal):
        assert response.status_code == 201, response.text
    return {"calibrator_id": calibrator.json()["id"], "detector_id": detector.json()["id"],
            "conformal_id": conformal.json()["id"]}  # fmt: skip


@pytest.fixture
def model_with_heads(client: TestClient) -> dict[str, Any]:
    data, x, _, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    return {"model": model, "heads": heads_of(client, model["id"], x, labels, "aps"), "data": data}


def test_predict_export_and_the_heads_own_endpoints_agree(client: TestClient, model_with_heads: dict[str, Any]) -> None:
    model, heads = model_with_heads["model"], model_with_heads["heads"]
    x = probe(np.float32)
    predicted = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": x.tolist()}, **heads}).json()
    export = client.get(f"/v1/models/{model['id']}/export", params=heads).content
    out = session_outputs(export, x)
    assert out["prediction_set"].dtype == np.bool_ and out["set_size"].dtype == np.int64
    assert out["prediction_set"].tolist() == predicted["prediction_set"]
    np.testing.assert_array_equal(out["set_size"], out["prediction_set"].sum(1))
    logits = encode_tensor_object(out["logits"])  # float32, as the export and predict compute them
    sets = client.post(f"/v1/conformal/{heads['conformal_id']}/predict", json={"logits": logits})
    assert [np.flatnonzero(row).tolist() for row in out["prediction_set"]] == sets.json()["sets"]
    embedding = encode_tensor_object(out["embedding"])
    scored = client.post(f"/v1/detectors/{heads['detector_id']}/score", json={"features": embedding})
    np.testing.assert_array_equal(out["ood_p_value"], scored.json()["p_values"])
    np.testing.assert_allclose(out["ood_score"], predicted["ood_score"], rtol=1e-5)


def test_a_pipeline_serves_probabilities_p_values_and_sets_through_tritonclient(
    live_server: str, client: TestClient, model_with_heads: dict[str, Any]
) -> None:
    model, heads = model_with_heads["model"], model_with_heads["heads"]
    pipeline = deploy(client, "guarded", model["id"], **heads)
    assert pipeline["conformal_id"] == heads["conformal_id"]
    export = client.get(f"/v1/pipelines/{pipeline['id']}/onnx").content
    x = probe(np.float32)
    want = session_outputs(export, x)
    with triton.InferenceServerClient(live_server.removeprefix("http://")) as tc:
        datatypes = {o["name"]: o["datatype"] for o in tc.get_model_metadata("guarded")["outputs"]}
        assert {k: datatypes[k] for k in ("probabilities", "ood_p_value", "prediction_set", "set_size")} == {
            "probabilities": "FP32", "ood_p_value": "FP64", "prediction_set": "BOOL", "set_size": "INT64"}  # fmt: skip
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        result = tc.infer("guarded", [given])
        for name in ("probabilities", "ood_p_value", "prediction_set", "set_size"):
            np.testing.assert_array_equal(result.as_numpy(name), want[name])
        single = triton.InferInput("x", [1, 6], "FP32")
        single.set_data_from_numpy(x[:1])
        assert tc.infer("guarded", [single]).as_numpy("prediction_set").tolist() == want["prediction_set"][:1].tolist()


@pytest.mark.parametrize("method", ["lac", "raps", "top_k"])
def test_every_method_exports_the_sets_predict_gives(client: TestClient, method: str) -> None:
    data, x, _, labels = make_data(np.float64, seed=3)
    model = upload(client, data).json()
    body = {"method": method, "model_id": model["id"], "inputs": {"x": x.tolist()}, "labels": labels.tolist(),
            "params": {"alpha": 0.1, "mondrian": method == "lac"}}  # fmt: skip
    conformal = client.post("/v1/conformal", json=body).json()
    fresh = probe(np.float64)
    predicted = client.post(f"/v1/models/{model['id']}/predict",
                            json={"inputs": {"x": fresh.tolist()}, "conformal_id": conformal["id"]}).json()  # fmt: skip
    export = client.get(f"/v1/models/{model['id']}/export", params={"conformal_id": conformal["id"]})
    out = session_outputs(export.content, fresh)
    assert out["prediction_set"].tolist() == predicted["prediction_set"]


def test_a_conformal_head_of_another_class_count_is_refused(client: TestClient) -> None:
    data, x, _, _ = make_data(np.float32)
    model = upload(client, data).json()
    other = client.post("/v1/conformal", json={"method": "lac", "logits": [[0.0, 1.0]] * 20, "labels": [0, 1] * 10})
    for response in (
        client.post(f"/v1/models/{model['id']}/predict",
                    json={"inputs": {"x": x[:2].tolist()}, "conformal_id": other.json()["id"]}),
        client.get(f"/v1/models/{model['id']}/export", params={"conformal_id": other.json()["id"]}),
        client.post("/v1/pipelines", json={"name": "p", "model_id": model["id"], "conformal_id": other.json()["id"]}),
    ):  # fmt: skip
        assert_problem(response, 422, "conformal_id")
    assert client.post(f"/v1/models/{model['id']}/predict",
                       json={"inputs": {"x": x[:2].tolist()}, "conformal_id": "nope"}).status_code == 404  # fmt: skip

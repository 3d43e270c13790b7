"""/v1/calibrators over the ASGI app: fit, store, get, list, delete, apply, export, and evaluations
with calibrator_id; every bad input is a 4xx and stores nothing."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from caliper_client import CaliperClient
from fastapi.testclient import TestClient

from tests.conftest import Y_A, Y_B, Z_A, Z_B, count_rows
from tests.test_api_bad_input import assert_problem

FIT_B = {"logits": Z_B.tolist(), "labels": Y_B.tolist()}
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "temperature": {},
    "temperature_ca": {},
    "vector_scaling": {},
    "matrix_scaling": {"reg_lambda": 0.1},
    "dirichlet": {"reg_lambda": 0.1, "reg_mu": 0.1},
    "histogram_binning": {"bins": 5},
    "isotonic": {},
    "platt": {},
    "beta": {},
}


def fit(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/calibrators", json={**FIT_B, **body})
    assert response.status_code == 201, response.text
    return response.json()


RNG = np.random.default_rng(5)
Z_R = RNG.normal(size=(60, 3)) * 2
Y_R = np.where(RNG.random(60) < 0.6, Z_R.argmax(1), RNG.integers(0, 3, 60))


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_fit_store_apply_export_round_trip(client: TestClient, method: str) -> None:
    created = fit(
        client,
        method=method,
        params=METHOD_PARAMS[method],
        model="m",
        tags={"k": "v"},
        logits=Z_R.tolist(),
        labels=Y_R.tolist(),
    )
    assert created["method"] == method and created["classes"] == 3
    report = created["fit_report"]
    assert set(report["before"]) == set(report["after"]) == {"nll", "ece", "brier"}
    assert client.get(f"/v1/calibrators/{created['id']}").json() == created
    applied = client.post(f"/v1/calibrators/{created['id']}/apply", json={"logits": Z_R.tolist()})
    assert applied.status_code == 200, applied.text
    probabilities = np.array(applied.json()["probabilities"])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-9)
    # applying to the fit data reproduces the report's `after`
    evaluation = client.post(
        "/v1/evaluations",
        json={
            "probabilities": probabilities.tolist(),
            "labels": Y_R.tolist(),
            "metrics": ["nll", "ece", "brier"],
            "store": False,
        },
    )
    assert evaluation.status_code == 201, evaluation.text
    evaluation = evaluation.json()
    for key, value in report["after"].items():
        np.testing.assert_allclose(evaluation["metrics"][key], value, rtol=1e-6, err_msg=key)
    # the exported model, in a fresh onnxruntime session, gives the same probabilities as /apply
    exported = client.get(f"/v1/calibrators/{created['id']}/onnx", params={"dtype": "float64"})
    assert exported.status_code == 200
    session = ort.InferenceSession(exported.content, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["logits"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    np.testing.assert_allclose(session.run(None, {"logits": Z_R})[0], probabilities, atol=1e-12)


def test_temperature_fit_reports_the_golden_numbers(client: TestClient) -> None:
    created = fit(client, method="temperature")
    np.testing.assert_allclose(created["fitted"]["temperature"], 0.7138390218, rtol=1e-6)
    np.testing.assert_allclose(created["fit_report"]["before"]["nll"], 0.6212124745, rtol=1e-8)
    np.testing.assert_allclose(created["fit_report"]["after"]["nll"], 0.5997393988, rtol=1e-8)
    np.testing.assert_allclose(created["fit_report"]["before"]["ece"], 0.2406726446, rtol=1e-8)
    np.testing.assert_allclose(created["fit_report"]["after"]["ece"], 0.1960539168, rtol=1e-6)
    info = created["fit_report"]["fit_info"]
    assert info["iterations"] >= 1 and abs(info["gradient"]) < 1e-7


def test_validation_split_and_cross_validation_are_reported(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 3)) * 3
    y = np.where(rng.random(120) < 0.6, z.argmax(1), rng.integers(0, 3, 120))
    body = {
        "method": "vector_scaling",
        "logits": z[:80].tolist(),
        "labels": y[:80].tolist(),
        "validation": {"logits": z[80:].tolist(), "labels": y[80:].tolist()},
        "cv": 4,
    }
    created = client.post("/v1/calibrators", json=body).json()
    assert set(created["fit_report"]["validation"]) == {"before", "after"}
    assert created["fit_report"]["cv"]["folds"] == 4 and set(created["fit_report"]["cv"]["after"]) == {
        "nll",
        "ece",
        "brier",
    }
    assert created["fit_report"]["validation"]["before"] != created["fit_report"]["before"]


def test_apply_as_npz_and_multipart(client: TestClient) -> None:
    created = fit(client, method="temperature")
    buffer = io.BytesIO()
    np.save(buffer, Z_B.astype(np.float32))
    files = {"request": (None, "{}", "application/json"), "logits": ("z.npy", buffer.getvalue())}
    response = client.post(
        f"/v1/calibrators/{created['id']}/apply", files=files, headers={"accept": "application/x-npz"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-npz"
    probabilities = np.load(io.BytesIO(response.content), allow_pickle=False)["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (10, 3)


def test_evaluation_with_a_calibrator_evaluates_calibrated_probabilities(client: TestClient) -> None:
    created = fit(client, method="temperature")
    evaluation = client.post(
        "/v1/evaluations", json={**FIT_B, "calibrator_id": created["id"], "metrics": ["nll", "ece"]}
    ).json()
    assert evaluation["calibrator_id"] == created["id"]
    np.testing.assert_allclose(evaluation["metrics"]["nll"], 0.5997393988, rtol=1e-8)
    assert client.get(f"/v1/evaluations/{evaluation['id']}").json()["calibrator_id"] == created["id"]
    missing = client.post("/v1/evaluations", json={**FIT_B, "calibrator_id": "nope"})
    assert_problem(missing, 404)


def test_list_filter_delete(client: TestClient) -> None:
    ids = [fit(client, method="temperature", model=f"m{i % 2}")["id"] for i in range(3)]
    listed = client.get("/v1/calibrators", params={"limit": 2}).json()
    assert [c["id"] for c in listed["items"]] == ids[::-1][:2] and listed["next_cursor"]
    assert {c["id"] for c in client.get("/v1/calibrators", params={"model": "m0"}).json()["items"]} == {ids[0], ids[2]}
    assert client.delete(f"/v1/calibrators/{ids[0]}").status_code == 204
    assert_problem(client.get(f"/v1/calibrators/{ids[0]}"), 404)
    assert_problem(client.delete(f"/v1/calibrators/{ids[0]}"), 404)


def test_python_client_can_fit_apply_and_export(client: TestClient) -> None:
    caliper = CaliperClient(client)
    created = caliper.fit_calibrator("temperature", logits=Z_A, labels=Y_A)
    np.testing.assert_allclose(created["fitted"]["temperature"], 1.5332185085, rtol=1e-6)
    probabilities = caliper.apply_calibrator(created["id"], Z_A)
    np.testing.assert_allclose(probabilities[0], [0.6590804987, 0.2477726389, 0.0931468625], atol=1e-8)
    session = ort.InferenceSession(caliper.export_calibrator(created["id"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"logits": Z_A.astype(np.float32)})[0], probabilities, atol=1e-6)


BAD_FITS: list[tuple[str, dict[str, Any], str]] = [
    ("single_class", {"method": "temperature", "logits": Z_A.tolist(), "labels": [0, 0, 0, 0]}, "labels"),
    (
        "fewer_rows_than_parameters",
        {"method": "matrix_scaling", "logits": Z_A.tolist(), "labels": Y_A.tolist()},
        "logits",
    ),
    ("unknown_method", {"method": "magic", **FIT_B}, "method"),
    ("unknown_parameter", {"method": "temperature", "params": {"bins": 3}, **FIT_B}, "params"),
    ("bad_bounds", {"method": "temperature", "params": {"bounds": [5, 1]}, **FIT_B}, "params"),
    (
        "views_for_temperature",
        {"method": "temperature", "logits": [[[1.0, 2.0]] * 2] * 4, "labels": [0, 1, 0, 1]},
        "logits",
    ),
    (
        "a_single_view",
        {"method": "temperature_ca", "logits": [[[1.0, 2.0]]] * 4, "labels": [0, 1, 0, 1]},
        "logits",
    ),
    ("labels_out_of_range", {"method": "temperature", "logits": Z_A.tolist(), "labels": [0, 1, 2, 3]}, "labels"),
    ("platt_all_right", {"method": "platt", "logits": Z_A.tolist(), "labels": [0, 2, 1, 0]}, "labels"),
    (
        "validation_wrong_classes",
        {"method": "temperature", **FIT_B, "validation": {"logits": [[1.0, 2.0]], "labels": [0]}},
        "validation.logits",
    ),
    ("cv_too_small", {"method": "temperature", **FIT_B, "cv": 6}, "cv"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD_FITS], ids=[c[0] for c in BAD_FITS])
def test_bad_fits_are_422_and_store_nothing(client: TestClient, body: dict[str, Any], field: str) -> None:
    assert_problem(client.post("/v1/calibrators", json=body), 422, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_non_finite_fit_data_is_rejected(client: TestClient) -> None:
    raw = '{"method": "temperature", "logits": [[1.0, NaN], [0.0, 1.0]], "labels": [0, 1]}'
    response = client.post("/v1/calibrators", content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 422, "logits")
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_apply_with_the_wrong_number_of_classes_names_both(client: TestClient) -> None:
    created = fit(client, method="temperature")
    response = client.post(f"/v1/calibrators/{created['id']}/apply", json={"logits": [[1.0, 2.0, 3.0, 4.0]]})
    assert_problem(response, 422, "logits")
    assert "C = 4" in response.json()["detail"] and "C = 3" in response.json()["detail"]
    assert_problem(client.post("/v1/calibrators/nope/apply", json={"logits": [[1.0, 2.0, 3.0]]}), 404)
    assert_problem(client.post(f"/v1/calibrators/{created['id']}/apply", json={}), 422, "logits")
    assert_problem(client.get(f"/v1/calibrators/{created['id']}/onnx", params={"dtype": "int8"}), 422)


def views_data(seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Views whose agreement with the original is lower on the rows the model gets wrong."""
    rng = np.random.default_rng(seed)
    n, v, c = 200, 4, 3
    original = rng.normal(size=(n, c)) * 3
    labels = np.where(rng.random(n) < 0.6, original.argmax(1), rng.integers(0, c, n))
    wrong = original.argmax(1) != labels
    noise = np.where(wrong[:, None, None], 4.0, 0.5)
    views = np.concatenate([original[:, None, :], original[:, None, :] + rng.normal(size=(n, v - 1, c)) * noise], 1)
    return views, labels


def test_temperature_ca_with_views_fits_applies_and_exports(client: TestClient) -> None:
    views, labels = views_data()
    created = client.post(
        "/v1/calibrators", json={"method": "temperature_ca", "logits": views.tolist(), "labels": labels.tolist()}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["fitted"]["views"] is True and body["fitted"]["agreement_slope"] > 0
    info = body["fit_report"]["fit_info"]
    assert info["ca_loss"] < info["global_ca_loss"]  # the agreement feature helps on this data
    applied = client.post(f"/v1/calibrators/{body['id']}/apply", json={"logits": views.tolist()})
    assert applied.status_code == 200, applied.text
    probabilities = np.array(applied.json()["probabilities"])
    assert probabilities.shape == (200, 3)
    np.testing.assert_array_equal(probabilities.argmax(1), views[:, 0, :].argmax(1))  # temperature keeps the argmax
    session = ort.InferenceSession(
        client.get(f"/v1/calibrators/{body['id']}/onnx", params={"dtype": "float64"}).content
    )
    np.testing.assert_allclose(session.run(None, {"logits": views})[0], probabilities, atol=1e-12)
    flat = client.post(f"/v1/calibrators/{body['id']}/apply", json={"logits": views[:, 0, :].tolist()})
    assert_problem(flat, 422, "logits")
    assert "views" in flat.json()["detail"]

"""/v1/estimates over the ASGI app (api.md, "Guarantees"): cbpe, atc and doc against a numpy oracle written
from the contract (softmax, a calibrator's probabilities, given probabilities, a model's logits), stored and
listed like evaluations, jobs, and bad input (422 naming the field, nothing stored)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests import onnx_models
from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem
from tests.test_conformal_core import sampled_labels

C = 4


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rows(seed: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their softmax (a calibrated model); `shift` blurs the logits."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, C)) * (2.0 - shift)
    return z, sampled_labels(rng, softmax(z))


def oracle(p: np.ndarray, ref_p: np.ndarray, ref_labels: np.ndarray) -> dict[str, Any]:
    """api.md's estimators in numpy: confidences c = max p, predictions = argmax (ties → lowest index)."""
    c, ref_c = p.max(1), ref_p.max(1)
    wrong = int((ref_p.argmax(1) != ref_labels).sum())
    t = -np.inf if wrong == 0 else np.sort(ref_c)[wrong - 1]
    accuracy = 1 - wrong / len(ref_labels)
    return {
        "accuracy_cbpe": c.mean(),
        "accuracy_atc": np.mean(c > t),
        "accuracy_doc": accuracy - (ref_c.mean() - c.mean()),
        "reference": {"n": len(ref_labels), "accuracy": accuracy, "mean_confidence": ref_c.mean(),
                      "atc_threshold": None if np.isinf(t) else t},
    }  # fmt: skip


def estimate(client: TestClient, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = client.post("/v1/estimates", json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_three_estimates_match_the_oracle(client: TestClient) -> None:
    z, _ = rows(1, 500, shift=0.5)
    ref_z, ref_labels = rows(2, 400)
    answer = estimate(client, {"logits": z.tolist(), "reference": {"logits": ref_z.tolist(),
                                                                   "labels": ref_labels.tolist()},
                               "model": "m", "dataset": "week-49", "tags": {"env": "prod"}})  # fmt: skip
    expected = oracle(softmax(z), softmax(ref_z), ref_labels)
    assert sorted(answer["estimates"]) == ["accuracy_atc", "accuracy_cbpe", "accuracy_doc"]
    for name, value in answer["estimates"].items():
        assert value == pytest.approx(expected[name], rel=1e-12), name
    assert answer["reference"] == pytest.approx(expected["reference"], rel=1e-12)
    assert answer["n"] == 500 and answer["mean_confidence"] == pytest.approx(softmax(z).max(1).mean(), rel=1e-12)
    assert answer["created_at"].endswith("Z") and (answer["model"], answer["dataset"]) == ("m", "week-49")
    assert client.get(f"/v1/estimates/{answer['id']}").json() == answer


def test_cbpe_alone_without_a_reference_and_probabilities_as_given(client: TestClient) -> None:
    z, _ = rows(3, 200)
    p = softmax(z)
    answer = estimate(client, {"probabilities": p.tolist()})
    assert answer["estimates"] == {"accuracy_cbpe": pytest.approx(p.max(1).mean(), rel=1e-12)}
    assert answer["reference"] is None


def test_a_calibrator_gives_the_confidences_of_rows_and_reference(client: TestClient) -> None:
    ref_z, ref_labels = rows(4, 400)
    calibrator = client.post("/v1/calibrators", json={"method": "temperature", "logits": (3 * ref_z).tolist(),
                                                      "labels": ref_labels.tolist()}).json()  # fmt: skip
    temperature = calibrator["fitted"]["temperature"]
    z, _ = rows(5, 300)
    reference = {"logits": (3 * ref_z).tolist(), "labels": ref_labels.tolist()}
    body = {"logits": (3 * z).tolist(), "calibrator_id": calibrator["id"], "methods": ["doc", "cbpe"]}
    answer = estimate(client, {**body, "reference": reference})
    expected = oracle(softmax(3 * z / temperature), softmax(3 * ref_z / temperature), ref_labels)
    assert list(answer["estimates"]) == ["accuracy_doc", "accuracy_cbpe"]
    assert answer["estimates"]["accuracy_doc"] == pytest.approx(expected["accuracy_doc"], rel=1e-9)
    assert answer["calibrator_id"] == calibrator["id"]


def test_a_perfect_reference_has_no_atc_threshold(client: TestClient) -> None:
    ref_z = np.eye(C)[np.arange(40) % C] * 5
    reference = {"logits": ref_z.tolist(), "labels": (np.arange(40) % C).tolist()}
    answer = estimate(client, {"logits": rows(6, 50)[0].tolist(), "methods": ["atc"], "reference": reference})
    assert answer["reference"]["atc_threshold"] is None and answer["estimates"] == {"accuracy_atc": 1.0}


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_estimates_track_accuracy_on_a_calibrated_model(client: TestClient, shift: float) -> None:
    """Labels drawn from the model's own probabilities (calibrated on both sides): E[cbpe] is the accuracy,
    and so is E[doc] (reference accuracy ≈ its mean confidence); atc holds without a shift (the threshold
    leaves the reference's accuracy above it) but is not unbiased when the logits' sharpness shifts, so it
    is checked only then. Slack: 4 standard errors of the difference of two 4,000-row accuracies + 0.01."""
    z, labels = rows(7, 4000, shift=shift)
    ref_z, ref_labels = rows(8, 4000)
    answer = estimate(
        client, {"logits": z.tolist(), "reference": {"logits": ref_z.tolist(), "labels": ref_labels.tolist()}}
    )
    accuracy = np.mean(softmax(z).argmax(1) == labels)
    margin = 4 * np.sqrt(2 * accuracy * (1 - accuracy) / 4000) + 0.01
    checked = ["accuracy_cbpe", "accuracy_doc"] + (["accuracy_atc"] if shift == 0 else [])
    for name in checked:
        assert abs(answer["estimates"][name] - accuracy) < margin, (name, answer["estimates"][name], accuracy)


def test_a_model_estimates_from_its_inputs(client: TestClient) -> None:
    data, weights = onnx_models.mlp(d=6, hidden=5, classes=C, dtype=np.float64, seed=3)
    model = client.post("/v1/models", files={"file": ("m.onnx", data, "application/octet-stream")},
                        data={"request": json.dumps({"name": "mlp"})}).json()  # fmt: skip
    rng = np.random.default_rng(9)
    x, ref_x = rng.normal(size=(120, 6)), rng.normal(size=(150, 6))
    ref_labels = rng.integers(0, C, 150)
    reference = {"inputs": {"x": ref_x.tolist()}, "labels": ref_labels.tolist()}
    answer = estimate(client, {"model_id": model["id"], "inputs": {"x": x.tolist()}, "reference": reference})
    expected = oracle(softmax(weights.forward(x)[0]), softmax(weights.forward(ref_x)[0]), ref_labels)
    for name, value in answer["estimates"].items():
        assert value == pytest.approx(expected[name], rel=1e-9), name
    assert answer["model_id"] == model["id"]


def test_listing_filters_by_model_dataset_and_tag(client: TestClient) -> None:
    z = rows(10, 30)[0].tolist()
    a = estimate(client, {"logits": z, "model": "m1", "dataset": "d1", "tags": {"week": "49"}})
    b = estimate(client, {"logits": z, "model": "m1", "dataset": "d2"})
    c = estimate(client, {"logits": z, "model": "m2", "tags": {"week": "50"}})

    def ids(**query: Any) -> list[str]:
        return [item["id"] for item in client.get("/v1/estimates", params=query).json()["items"]]

    assert ids() == [c["id"], b["id"], a["id"]] and ids(model="m1") == [b["id"], a["id"]]
    assert ids(dataset="d1") == [a["id"]] and ids(tag="week:49") == [a["id"]] and ids(tag="week") == [c["id"], a["id"]]
    assert client.delete(f"/v1/estimates/{a['id']}").status_code == 204
    assert client.get(f"/v1/estimates/{a['id']}").status_code == 404


def test_an_estimate_runs_as_a_job(client: TestClient) -> None:
    response = client.post(
        "/v1/estimates", json={"logits": rows(11, 60)[0].tolist()}, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202, response.text
    job = client.app.state.resources.jobs.wait(response.json()["id"], 60)  # type: ignore[attr-defined]
    assert job.state == "succeeded" and job.kind == "estimate" and job.result is not None
    assert job.result["n"] == 60


Z, REF = rows(12, 20)[0].tolist(), {"logits": rows(13, 20)[0].tolist(), "labels": [0, 1, 2, 3] * 5}
BAD = [
    ("atc without a reference", {"logits": Z, "methods": ["atc"]}, "methods"),
    ("doc without a reference", {"logits": Z, "methods": ["cbpe", "doc"]}, "methods"),
    ("unknown method", {"logits": Z, "methods": ["mandoline"]}, "methods"),
    ("no methods", {"logits": Z, "methods": []}, "methods"),
    ("no rows", {"methods": ["cbpe"]}, "logits"),
    ("both inputs", {"logits": Z, "probabilities": [[0.25] * C] * 20}, "logits"),
    ("1-D logits", {"logits": [0.5] * 20}, "logits"),
    ("reference of another C", {"logits": Z, "reference": {"logits": [[0.0] * 3] * 20, "labels": [0] * 20}},
     "reference.logits"),
    ("reference labels out of range", {"logits": Z, "reference": {**REF, "labels": [C] * 20}}, "reference.labels"),
    ("reference without labels", {"logits": Z, "reference": {"logits": REF["logits"]}}, "reference.labels"),
    ("unknown reference field", {"logits": Z, "reference": {**REF, "weights": [1.0] * 20}}, "reference.weights"),
    ("calibrator with probabilities", {"probabilities": [[0.25] * C] * 20, "calibrator_id": "x"}, "calibrator_id"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_estimates_are_4xx_naming_the_field_and_store_nothing(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    before = count_rows(client.app)  # type: ignore[arg-type]
    assert_problem(client.post("/v1/estimates", json=body), 422, field)
    assert count_rows(client.app) == before  # type: ignore[arg-type]

"""/v1/evaluations over the ASGI app, on every configured database backend."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from typing import Any

import numpy as np
import pytest
from caliper_client import CaliperClient
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient

from tests.conftest import Y_A, Z_A, count_rows, load_golden

BODY = {"logits": Z_A.tolist(), "labels": Y_A.tolist()}


def post(client: TestClient, body: dict) -> dict:
    response = client.post("/v1/evaluations", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["database"]["status"] == "ok"
    assert (
        ready["checks"]["model_workers"]["status"] == "ok" and ready["checks"]["model_workers"]["detail"]["size"] == 2
    )


def test_readiness_names_no_database_details_and_answers_while_the_database_stalls(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """/readyz needs no key: it shows the backend, not the URL's user, host or database name; and a
    database that does not answer makes it answer 503 within its own limit, not hang."""
    from app.api.routes import health

    ready = client.get("/readyz")
    assert ready.json()["checks"]["database"]["detail"] == {
        "backend": settings.database_url.split("+")[0].split(":")[0]
    }
    assert settings.database_url not in ready.text
    monkeypatch.setattr(health, "READINESS_TIMEOUT_S", 0.5)
    monkeypatch.setattr(health, "schema_revisions", lambda *args: time.sleep(3))
    started = time.monotonic()
    stalled = client.get("/readyz")
    assert stalled.status_code == 503 and time.monotonic() - started < 2.5
    assert stalled.json()["checks"]["database"]["status"] == "unavailable" and stalled.headers["retry-after"]


def test_default_evaluation_matches_golden_and_is_stored(client: TestClient) -> None:
    golden = load_golden("calibration_metrics_4x3.json")
    created = post(client, {**BODY, "model": "resnet@abc", "dataset": "cifar", "tags": {"git_sha": "abc"}})
    assert created["n"] == 4 and created["classes"] == 3
    assert set(created["metrics"]) == {"accuracy", "nll", "brier", "ece", "mce"}
    np.testing.assert_allclose(created["losses"]["cross_entropy"], 0.9389701905189698, rtol=1e-12)
    np.testing.assert_allclose(created["metrics"]["ece"], golden["ece_uniform_B15_l1"], rtol=1e-12)
    np.testing.assert_allclose(created["metrics"]["brier"], golden["brier_mc"], rtol=1e-12)
    assert len(created["reliability"]["bins"]) == 15
    assert created["created_at"].endswith("Z")
    fetched = client.get(f"/v1/evaluations/{created['id']}").json()
    for field in (
        "id",
        "n",
        "classes",
        "model",
        "dataset",
        "tags",
        "losses",
        "metrics",
        "reliability",
        "dataset_fingerprint",
        "created_at",
    ):
        assert fetched[field] == created[field], field
    rows = count_rows(client.app)  # type: ignore[arg-type]
    assert rows["evaluation_arrays"] == 4  # label, prediction, confidence, loss.cross_entropy


def test_parameterised_terms_are_reported_under_their_key(client: TestClient) -> None:
    golden = load_golden("losses_4x3.json")
    result = post(
        client,
        {
            **BODY,
            "losses": ["nll", {"name": "focal", "gamma": 2, "key": "focal_g2"}],
            "metrics": [{"name": "ece", "bins": 5, "norm": "l2", "key": "rmsce5"}],
            "per_sample": True,
        },
    )
    np.testing.assert_allclose(result["losses"]["focal_g2"], golden["focal_g2.0_mean"], rtol=1e-12)
    np.testing.assert_allclose(result["per_sample"]["focal_g2"], golden["focal_g2.0"], rtol=1e-12)
    assert set(result["metrics"]) == {"rmsce5"}
    assert len(result["reliability"]["bins"]) == 5  # the first uniform ECE's bins
    stored = client.get(f"/v1/evaluations/{result['id']}", params={"per_sample": True}).json()
    np.testing.assert_allclose(stored["per_sample"]["focal_g2"], golden["focal_g2.0"], rtol=1e-12)


def test_empty_lists_compute_nothing_and_wide_defaults_add_top_k(client: TestClient) -> None:
    assert post(client, {**BODY, "losses": [], "metrics": []})["losses"] == {}
    rng = np.random.default_rng(0)
    wide = post(client, {"logits": rng.normal(size=(20, 8)).tolist(), "labels": rng.integers(0, 8, 20).tolist()})
    assert "top_k_accuracy" in wide["metrics"]


def test_float32_tensor_objects_are_computed_in_float32(client: TestClient) -> None:
    body = {
        "logits": encode_tensor_object(Z_A.astype(np.float32)),
        "labels": encode_tensor_object(Y_A.astype(np.int32)),
    }
    result = post(client, body)
    np.testing.assert_allclose(result["losses"]["cross_entropy"], 0.9389701905189698, rtol=1e-6)
    assert result["losses"]["cross_entropy"] != 0.9389701905189698  # not silently upcast


def test_multipart_npy_equals_json(client: TestClient) -> None:
    def npy(a: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, a)
        return buffer.getvalue()

    options = {"losses": ["cross_entropy", "brier"], "model": "m"}
    files = {
        "request": (None, json.dumps(options), "application/json"),
        "logits": ("l.npy", npy(Z_A)),
        "labels": ("y.npy", npy(Y_A)),
    }
    response = client.post("/v1/evaluations", files=files)
    assert response.status_code == 201, response.text
    expected = post(client, {**BODY, **options})
    assert response.json()["losses"] == expected["losses"]
    assert response.json()["metrics"] == expected["metrics"]


def test_store_false_computes_without_writing(client: TestClient) -> None:
    result = post(client, {**BODY, "store": False})
    assert result["id"] is None
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_list_filters_and_cursor_pagination(client: TestClient) -> None:
    ids = [
        post(client, {**BODY, "model": "a" if i % 2 else "b", "dataset": "d", "tags": {"run": str(i)}})["id"]
        for i in range(5)
    ]
    listed = client.get("/v1/evaluations", params={"limit": 2}).json()
    seen = [item["id"] for item in listed["items"]]
    while listed["next_cursor"]:
        listed = client.get("/v1/evaluations", params={"limit": 2, "cursor": listed["next_cursor"]}).json()
        seen += [item["id"] for item in listed["items"]]
    assert seen == ids[::-1]  # newest first, each once
    assert {i["id"] for i in client.get("/v1/evaluations", params={"model": "a"}).json()["items"]} == {ids[1], ids[3]}
    tagged = client.get("/v1/evaluations", params={"tag": "run:2", "dataset": "d"}).json()["items"]
    assert [i["id"] for i in tagged] == [ids[2]]
    assert client.get("/v1/evaluations", params={"tag": ["run:2", "run:3"]}).json()["items"] == []


def test_delete_removes_everything(client: TestClient) -> None:
    evaluation_id = post(client, BODY)["id"]
    assert client.delete(f"/v1/evaluations/{evaluation_id}").status_code == 204
    assert client.get(f"/v1/evaluations/{evaluation_id}").status_code == 404
    assert client.delete(f"/v1/evaluations/{evaluation_id}").status_code == 404
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_overflowing_loss_is_null_not_an_error(client: TestClient) -> None:
    result = post(
        client, {"logits": [[0.0, 800.0]], "labels": [0], "losses": ["sum_exp", "cross_entropy"], "per_sample": True}
    )
    assert result["losses"]["sum_exp"] is None and result["per_sample"]["sum_exp"] == [None]
    assert result["losses"]["cross_entropy"] == 800.0
    assert client.get(f"/v1/evaluations/{result['id']}").json()["losses"]["sum_exp"] is None


def test_openapi_documents_the_request_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post_op = schema["paths"]["/v1/evaluations"]["post"]
    assert set(post_op["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    request = schema["components"]["schemas"]["EvaluationRequest"]
    assert {"logits", "labels", "losses", "metrics", "per_sample", "store"} <= set(request["properties"])
    assert "Focal" in schema["components"]["schemas"]


@pytest.mark.parametrize("threshold", [1 << 30, 64], ids=["json", "multipart"])
def test_client_picks_a_transport_and_round_trips(client: TestClient, threshold: int) -> None:
    caliper = CaliperClient(client, multipart_threshold=threshold)
    result = caliper.evaluate(logits=Z_A, labels=Y_A, losses=["cross_entropy"], model="m", per_sample=True)
    np.testing.assert_allclose(result["losses"]["cross_entropy"], 0.9389701905189698, rtol=1e-12)
    assert caliper.get_evaluation(result["id"])["model"] == "m"
    assert [i["id"] for i in caliper.list_evaluations(model="m")["items"]] == [result["id"]]
    caliper.delete_evaluation(result["id"])
    assert caliper.list_evaluations()["items"] == []


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_the_dataset_fingerprint_is_the_sha256_of_the_int64_labels_whatever_the_blocks(dtype: type) -> None:
    """Hashed a block at a time (streamed labels are never copied whole): the digest of the whole int64
    little-endian column, for labels kept in any integer dtype and soft targets alike."""
    from app.core.evaluation import validate_batch
    from app.evaluation.service import dataset_fingerprint

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 1_003)
    batch = validate_batch(logits=rng.normal(size=(1_003, 5)), labels=labels)
    expected = hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest()
    kept = dataclasses.replace(batch, labels=labels.astype(dtype))
    assert {dataset_fingerprint(kept, block_rows) for block_rows in (7, 1_000, 1 << 20)} == {expected}
    targets = rng.dirichlet(np.ones(5), 1_003)
    soft = validate_batch(logits=rng.normal(size=(1_003, 5)), targets=targets)
    assert dataset_fingerprint(soft, 10) == hashlib.sha256(targets.astype("<f8").tobytes()).hexdigest()

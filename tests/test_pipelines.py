"""/v1/pipelines: versions per name, heads checked at creation, the export built once and stored, the
model protected from deletion while a pipeline deploys it."""

from __future__ import annotations

import threading

import numpy as np
import onnx
from fastapi.testclient import TestClient

from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem
from tests.test_api_models import resources, upload
from tests.test_export import fit_heads, make_data, predicted, probe, session_outputs


def deploy(client: TestClient, name: str, model_id: str, **heads: str) -> dict[str, object]:
    response = client.post("/v1/pipelines", json={"name": name, "model_id": model_id, **heads})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_versions_onnx_and_listing(client: TestClient) -> None:
    data, x, _, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    first = deploy(client, "digits", model["id"], calibrator_id=heads["calibrator_id"])
    second = deploy(client, "digits", model["id"], **heads)
    other = deploy(client, "other", model["id"])
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    assert [o["name"] for o in second["outputs"]] == [  # type: ignore[index]
        "logits",
        "embedding",
        "probabilities",
        "ood_score",
        "sdm_probabilities",
        "sdm_q",
        "sdm_d",
        "high_reliability",
    ]
    assert second["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 6]}]
    assert second["dtype"] == "float32"
    listed = client.get("/v1/pipelines", params={"name": "digits"}).json()["items"]
    assert [p["version"] for p in listed] == [2, 1]
    onnx_bytes = client.get(f"/v1/pipelines/{second['id']}/onnx").content
    assert onnx_bytes == client.get(f"/v1/models/{model['id']}/export", params=heads).content
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    assert client.get(f"/v1/pipelines/{first['id']}").json()["sha256"] == first["sha256"]
    x = probe(np.float32)
    got = session_outputs(onnx_bytes, x)
    np.testing.assert_allclose(
        got["probabilities"], predicted(client, model["id"], x, **heads)["probabilities"], rtol=2e-6
    )


def test_the_export_is_kept_when_a_head_is_deleted(client: TestClient) -> None:
    data, x, _, labels = make_data(np.float64)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    pipeline = deploy(client, "kept", model["id"], calibrator_id=heads["calibrator_id"])
    before = client.get(f"/v1/pipelines/{pipeline['id']}/onnx").content
    assert client.delete(f"/v1/calibrators/{heads['calibrator_id']}").status_code == 204
    assert client.get(f"/v1/pipelines/{pipeline['id']}/onnx").content == before


def test_a_deployed_model_cannot_be_deleted_until_its_pipelines_are(client: TestClient) -> None:
    data, *_ = make_data(np.float32)
    model = upload(client, data).json()
    pipeline = deploy(client, "guarded", model["id"])
    response = client.delete(f"/v1/models/{model['id']}")
    assert_problem(response, 409)
    assert "guarded v1" in response.json()["detail"] and pipeline["id"] in response.json()["detail"]
    assert client.get(f"/v1/models/{model['id']}").status_code == 200
    assert client.delete(f"/v1/pipelines/{pipeline['id']}").status_code == 204
    assert not resources(client).artifacts.path(pipeline["sha256"]).exists()  # its export file went with it
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert_problem(client.get(f"/v1/pipelines/{pipeline['id']}"), 404)


def test_heads_that_do_not_fit_are_refused_at_creation_and_nothing_is_stored(client: TestClient) -> None:
    data, *_ = make_data(np.float32)
    model = upload(client, data).json()  # no embedding output: no detector or SDM can fit
    wide = np.random.default_rng(0).normal(size=(40, 4))
    calibrator = client.post(
        "/v1/calibrators", json={"method": "temperature", "logits": wide.tolist(), "labels": [0, 1, 2, 3] * 10}
    ).json()
    detector = client.post(
        "/v1/detectors", json={"method": "knn", "features": wide.tolist(), "labels": [0, 1] * 20, "params": {"k": 3}}
    ).json()
    before = count_rows(client.app)  # type: ignore[arg-type]
    files = sorted(resources(client).artifacts.root.iterdir())
    for heads, field in [
        ({"calibrator_id": calibrator["id"]}, "calibrator_id"),
        ({"detector_id": detector["id"]}, "detector_id"),
        ({"sdm_id": "nope"}, None),
        ({}, None),
    ]:
        body = {"name": "bad", "model_id": "nope" if not heads else model["id"], **heads}
        response = client.post("/v1/pipelines", json=body)
        assert_problem(response, 422 if field else 404)
        if field:
            assert response.json()["errors"][0]["field"] == field
    assert_problem(client.post("/v1/pipelines", json={"name": "no spaces", "model_id": model["id"]}), 422)
    assert count_rows(client.app) == before  # type: ignore[arg-type]
    assert sorted(resources(client).artifacts.root.iterdir()) == files


def test_concurrent_posts_of_one_name_get_distinct_versions(client: TestClient) -> None:
    data, *_ = make_data(np.float32)
    model = upload(client, data).json()
    versions: list[int] = []

    def post() -> None:
        versions.append(deploy(client, "raced", model["id"])["version"])  # type: ignore[arg-type]

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]

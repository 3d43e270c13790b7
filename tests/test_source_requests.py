"""Requests beside /v1/evaluations that read `source` files (api.md, "Jobs, data sources and scale-out"):
a model evaluation streams its inputs from files through the model, a Mahalanobis detector streams its
features (chunk statistics merged), the other fits read their files whole within
CALIPER_MAX_SOURCE_BYTES; each equals the same request with inline tensors; bad sources are 422s that
store nothing; a fit from files runs as a job with progress."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests import onnx_models
from tests.conftest import LOCAL, count_rows, files_app
from tests.test_api_bad_input import assert_problem
from tests.test_sdm_core import CAL_H, CAL_Y, CAL_Z, SUP_H, SUP_Y, SUP_Z

N, D, C = 2_000, 6, 3
VOLATILE = ("id", "created_at", "updated_at", "links")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    labels = np.sort(rng.integers(0, C, N))  # sorted: the first chunks see class 0 only (classes widen on merge)
    features = rng.normal(size=(N, D)) + 2.5 * np.eye(C, D)[labels]
    logits = (rng.normal(size=(N, C)) * 1.5 + 2.0 * np.eye(C)[labels]).astype(np.float32)
    return {"features": features, "labels": labels, "logits": logits, "probe": rng.normal(size=(50, D)) * 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Path:
    folder = tmp_path_factory.mktemp("fit-data")
    for k, rows in enumerate(np.array_split(np.arange(N), 3)):
        np.save(folder / f"features-{k}.npy", data["features"][rows].astype(np.float32))
    np.save(folder / "labels.npy", data["labels"].astype(np.int32))
    np.save(folder / "float-labels.npy", data["labels"].astype(np.float64))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(data["logits"].ravel()), C)
    pq.write_table(pa.table({"logits": fixed, "labels": data["labels"]}), folder / "val.parquet", row_group_size=301)
    x = data["features"].astype(np.float32)
    for k, rows in enumerate(np.array_split(np.arange(N), 4)):
        np.save(folder / f"x-{k}.npy", x[rows])
    pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D)}), folder / "x.parquet")
    np.save(folder / "bad-x-int.npy", np.ones((N, D), np.int64))
    poisoned = x.copy()
    poisoned[N - 3, 1] = np.nan  # in the last model batch: found while reading, after most of the work
    np.save(folder / "bad-x-nan.npy", poisoned)
    for part, (h, z, y) in {"support": (SUP_H, SUP_Z, SUP_Y), "calibration": (CAL_H, CAL_Z, CAL_Y)}.items():
        np.save(folder / f"{part}-embeddings.npy", np.asarray(h))
        np.save(folder / f"{part}-logits.npy", np.asarray(z, np.float64))
        np.save(folder / f"{part}-labels.npy", np.asarray(y))
    return folder


@pytest.fixture(scope="module")
def fit_app(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[FastAPI]:
    app = files_app(tmp_path_factory.mktemp("fits"), root, chunk_size=128, model_batch_rows=96)
    yield app
    app.state.resources.close()


@pytest.fixture
def api(fit_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(fit_app, base_url=LOCAL) as client:
        yield client


def post(api: TestClient, path: str, body: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Any:
    """A POST as JSON, or as multipart with `arrays` as .npy parts (keeping their dtype)."""
    if arrays is None:
        return api.post(path, json=body)
    files: dict[str, Any] = {"request": (None, json.dumps(body), "application/json")}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        files[name] = (f"{name}.npy", buffer.getvalue())
    return api.post(path, files=files)


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in VOLATILE}


def scores(api: TestClient, detector_id: str, probe: np.ndarray) -> np.ndarray:
    response = api.post(f"/v1/detectors/{detector_id}/score", json={"features": probe.tolist()})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["scores"])


def features_source(root: Path) -> dict[str, str]:
    return {"features": str(root / "features-*.npy"), "labels": str(root / "labels.npy")}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"shrinkage": "ledoit_wolf"},
        {"covariance": "per_class"},
        {"covariance": "diagonal"},
        {"normalize": True, "shrinkage": "oas"},
    ],
    ids=["tied", "ledoit-wolf", "per-class", "diagonal", "normalized-oas"],
)
def test_a_mahalanobis_fit_from_files_equals_the_inline_fit(
    api: TestClient, root: Path, data: dict[str, np.ndarray], params: dict[str, Any]
) -> None:
    inline = {"features": data["features"].astype(np.float32), "labels": data["labels"].astype(np.int32)}
    expected = created(post(api, "/v1/detectors", {"method": "mahalanobis", "params": params}, inline))
    got = created(
        post(api, "/v1/detectors", {"method": "mahalanobis", "params": params, "source": features_source(root)})
    )
    assert stable(got) == stable(expected)  # fit_info's counts are exact
    np.testing.assert_allclose(
        scores(api, got["id"], data["probe"]), scores(api, expected["id"], data["probe"]), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("method", ["relative_mahalanobis", "knn"])
def test_labels_inline_with_features_from_files_and_a_fit_that_reads_whole(
    api: TestClient, root: Path, data: dict[str, np.ndarray], method: str
) -> None:
    """relative_mahalanobis streams the files beside the inline labels; knn reads its support whole."""
    params = {"k": 5} if method == "knn" else {}
    features = data["features"].astype(np.float32)
    expected = created(post(api, "/v1/detectors", {"method": method, "params": params},
                            {"features": features, "labels": data["labels"]}))  # fmt: skip
    body = {"method": method, "params": params, "source": {"features": str(root / "features-*.npy")}}
    got = created(post(api, "/v1/detectors", body, {"labels": data["labels"]}))
    assert stable(got) == stable(expected)
    np.testing.assert_allclose(
        scores(api, got["id"], data["probe"]), scores(api, expected["id"], data["probe"]), rtol=1e-9, atol=1e-9
    )


def test_a_calibrator_fit_from_parquet_equals_the_inline_fit(
    api: TestClient, root: Path, data: dict[str, np.ndarray]
) -> None:
    half = N // 2
    inline = {"logits": data["logits"], "labels": data["labels"],
              "validation.logits": data["logits"][:half], "validation.labels": data["labels"][:half]}  # fmt: skip
    options = {"method": "temperature", "cv": 2}
    expected = created(post(api, "/v1/calibrators", options, inline))
    source = {"logits": str(root / "val.parquet"), "labels": str(root / "val.parquet")}
    validation = {"validation.logits": data["logits"][:half], "validation.labels": data["labels"][:half]}
    got = created(post(api, "/v1/calibrators", {**options, "source": source}, validation))
    assert got["fitted"]["temperature"] == pytest.approx(expected["fitted"]["temperature"], rel=1e-9)
    assert got["fit_report"]["before"] == pytest.approx(expected["fit_report"]["before"], rel=1e-12)


def test_an_sdm_fit_from_files_equals_the_inline_fit(api: TestClient, root: Path) -> None:
    params = {"alpha": 0.95, "k": 2048}
    inline = {"support": {"embeddings": SUP_H, "logits": SUP_Z, "labels": SUP_Y},
              "calibration": {"embeddings": CAL_H, "logits": CAL_Z, "labels": CAL_Y}}  # fmt: skip
    expected = created(api.post("/v1/sdm", json={**inline, "params": params}))
    source = {f"{part}.{name}": str(root / f"{part}-{name}.npy")
              for part in ("support", "calibration") for name in ("embeddings", "logits", "labels")}  # fmt: skip
    got = created(api.post("/v1/sdm", json={"source": source, "params": params}))
    assert stable(got).keys() == stable(expected).keys()
    for key, value in stable(expected).items():
        assert got[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


def test_bad_fit_sources_are_422s_that_store_nothing(
    api: TestClient, fit_app: FastAPI, root: Path, data: dict[str, np.ndarray]
) -> None:
    before = count_rows(fit_app)
    source = features_source(root)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/detectors", {"method": "mahalanobis", "source": {"features": source["features"]}}, "labels"),
        ("/v1/detectors", {"method": "mahalanobis", "source": {"features": source["features"],
                                                               "labels": str(root / "support-labels.npy")}},
         "source.labels"),
        ("/v1/detectors", {"method": "mahalanobis", "source": {"logits": source["features"]}}, "source"),
        ("/v1/detectors", {"method": "mahalanobis", "source": {"features": str(root / "labels.npy"),
                                                               "labels": source["labels"]}}, "features"),
        ("/v1/detectors", {"method": "mahalanobis", "source": {"features": source["features"],
                                                               "labels": str(root / "float-labels.npy")}}, "labels"),
        ("/v1/detectors", {"method": "mahalanobis", "source": {"features": "/etc/passwd", "labels": source["labels"]}},
         "source.features"),
        ("/v1/calibrators", {"method": "temperature", "source": {"logits": str(root / "val.parquet")}}, "logits"),
        ("/v1/calibrators", {"method": "temperature", "source": {"logits": str(root / "val.parquet"),
                                                                 "labels": str(root / "support-labels.npy")}},
         "source"),
        ("/v1/sdm", {"source": {"support.embeddings": str(root / "support-embeddings.npy")}}, "support"),
    ]  # fmt: skip
    for path, body, field in cases:
        assert_problem(api.post(path, json=body), 422, field)
    twice = post(api, "/v1/detectors", {"method": "knn", "source": source}, {"labels": data["labels"]})
    assert_problem(twice, 422, "source.labels")
    assert count_rows(fit_app) == before


def test_a_fit_that_reads_whole_is_refused_over_the_byte_limit(
    api: TestClient, fit_app: FastAPI, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = fit_app.state.resources
    size = N * (D * 4 + 4)  # float32 features and int32 labels
    for service in (resources.detectors, resources.calibrators):
        monkeypatch.setattr(service, "files", replace(service.files, whole_bytes=size - 1))
    before = count_rows(fit_app)
    response = api.post("/v1/detectors", json={"method": "knn", "params": {"k": 3}, "source": features_source(root)})
    assert_problem(response, 422, "source")
    assert "CALIPER_MAX_SOURCE_BYTES" in response.json()["detail"]
    streamed = api.post("/v1/detectors", json={"method": "mahalanobis", "source": features_source(root)})
    assert streamed.status_code == 201, streamed.text  # a streamed fit has no such limit
    assert count_rows(fit_app)["detectors"] == before["detectors"] + 1


def test_a_fit_from_files_runs_as_a_job_with_progress(api: TestClient, root: Path) -> None:
    body = {"method": "mahalanobis", "params": {"shrinkage": "ledoit_wolf"}, "source": features_source(root)}
    response = api.post("/v1/detectors", json=body, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    job = api.app.state.resources.jobs.wait(response.json()["id"], 60)  # type: ignore[attr-defined]
    assert job.state == "succeeded", job
    assert (job.progress.done, job.progress.total, job.progress.unit) == (N, N, "rows")
    assert api.get(f"/v1/detectors/{job.result['id']}").json()["fit_info"]["n"] == N


@pytest.fixture(scope="module")
def model(fit_app: FastAPI) -> dict[str, Any]:
    data, _ = onnx_models.mlp(d=D, hidden=5, classes=C, dtype=np.float32, seed=2)
    with TestClient(fit_app, base_url=LOCAL) as client:
        files = {"file": ("model.onnx", data, "application/octet-stream")}
        uploaded = client.post("/v1/models", files=files, data={"request": json.dumps({"name": "mlp"})})
    assert uploaded.status_code == 201, uploaded.text
    answer: dict[str, Any] = uploaded.json()
    return answer


@pytest.mark.parametrize("inputs", ["x-*.npy", "x.parquet"])
def test_a_model_evaluation_from_files_equals_the_inline_one(
    api: TestClient, root: Path, data: dict[str, np.ndarray], model: dict[str, Any], inputs: str
) -> None:
    """The inputs stream through the model in its batches, labels and weights beside them: the numbers, the
    fingerprint and the stored rows of the inline evaluation."""
    weights = np.random.default_rng(8).uniform(0.5, 2.0, N)
    region = (np.arange(N) % 3).astype(str).tolist()
    options = {"metrics": ["accuracy", "ece", "f1"], "per_sample": True, "slices": {"region": region}}
    path = f"/v1/models/{model['id']}/evaluations"
    expected = created(post(api, path, options, {"inputs.x": data["features"].astype(np.float32),
                                                 "labels": data["labels"], "sample_weight": weights}))  # fmt: skip
    source = {"inputs.x": str(root / inputs), "labels": str(root / "labels.npy")}
    got = created(post(api, path, {**options, "source": source}, {"sample_weight": weights}))
    assert stable(got).keys() == stable(expected).keys()
    for key in ("n", "classes", "dataset_fingerprint", "model_id", "slices"):
        assert got[key] == expected[key], key
    for part in ("losses", "metrics"):
        assert got[part] == pytest.approx(expected[part], rel=1e-12, abs=1e-15), part
    for loss, values in expected["per_sample"].items():
        np.testing.assert_allclose(got["per_sample"][loss], values, rtol=1e-12, atol=1e-15)


def test_bad_model_input_files_are_422s_that_store_nothing(
    api: TestClient, fit_app: FastAPI, root: Path, data: dict[str, np.ndarray], model: dict[str, Any]
) -> None:
    path, labels = f"/v1/models/{model['id']}/evaluations", str(root / "labels.npy")
    before = count_rows(fit_app)
    cases = [
        ({"inputs.y": str(root / "x-*.npy"), "labels": labels}, "inputs.y"),  # the model's input is x
        ({"inputs.x": str(root / "bad-x-int.npy"), "labels": labels}, "inputs.x"),  # integers for a float input
        ({"inputs.x": str(root / "bad-x-nan.npy"), "labels": labels}, "inputs.x"),  # NaN in the last batch
        ({"inputs.x": str(root / "x-0.npy"), "labels": labels}, "source"),  # 500 rows of inputs, 2,000 labels
        ({"inputs.x": str(root / "x-*.npy"), "logits": labels}, "source"),  # logits come from the model
    ]
    for source, field in cases:
        assert_problem(api.post(path, json={"source": source}), 422, field)
    twice = post(api, path, {"source": {"inputs.x": str(root / "x.parquet")}},
                 {"inputs.x": data["features"].astype(np.float32), "labels": data["labels"]})  # fmt: skip
    assert_problem(twice, 422, "source.inputs.x")
    assert count_rows(fit_app) == before

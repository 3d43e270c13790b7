"""Data sources (api.md, "Jobs, data sources and scale-out"): tensor fields read from `.npy` shards, Parquet
files and fsspec URLs give the evaluation the same tensors inline give, chunk by chunk across shard
edges; every bad source is a 422 naming the file or field, before anything is stored."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.storage.migrate import upgrade
from tests.conftest import LOCAL, count_rows, files_app
from tests.test_api_bad_input import assert_problem

N, C = 1000, 4
ASYNC = {"Prefer": "respond-async"}
METRICS = {"metrics": ["accuracy", "ece", "brier", "f1"]}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, C, N)
    logits = (rng.normal(size=(N, C)) + 1.5 * np.eye(C)[labels]).astype(np.float32)
    return {"logits": logits, "labels": labels, "weights": rng.uniform(0.5, 2.0, N)}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for k, (start, stop) in enumerate([(0, 333), (333, 334), (334, N)]):  # a one-row shard among them
        np.save(folder / f"logits-{k:02d}.npy", data["logits"][start:stop])
    np.save(folder / "labels.npy", data["labels"])
    np.save(folder / "weights.npy", data["weights"])
    logits = data["logits"]
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), C)
    pq.write_table(pa.table({"logits": fixed, "labels": data["labels"]}), folder / "fixed.parquet", row_group_size=97)
    columns = {f"logits.{k}": logits[:, k] for k in range(C)} | {"labels": data["labels"]}
    pq.write_table(pa.table(columns), folder / "per-class.parquet")
    lists = pa.array(logits.tolist(), type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"logits": lists}), folder / "lists.parquet")
    return folder


@pytest.fixture(scope="module")
def source_app(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[FastAPI]:
    app = files_app(tmp_path_factory.mktemp("sources"), root, chunk_size=64, data_urls="memory://caliper/")
    yield app
    app.state.resources.close()


@pytest.fixture
def api(source_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(source_app, base_url=LOCAL) as client:
        yield client


def evaluate(api: TestClient, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = api.post("/v1/evaluations", json={**METRICS, **body})
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def multipart(api: TestClient, arrays: dict[str, np.ndarray], options: dict[str, Any]) -> dict[str, Any]:
    """The same evaluation with the arrays sent inline as .npy parts (keeping their dtype)."""
    files: dict[str, Any] = {"request": (None, json.dumps({**METRICS, **options}), "application/json")}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        files[name] = (f"{name}.npy", buffer.getvalue())
    response = api.post("/v1/evaluations", files=files)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
def inline(api: TestClient, data: dict[str, np.ndarray]) -> dict[str, Any]:
    return multipart(api, {"logits": data["logits"], "labels": data["labels"]}, {"store": False})


def same_numbers(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got["n"] == expected["n"] and got["dataset_fingerprint"] == expected["dataset_fingerprint"]
    for part in ("losses", "metrics"):
        assert got[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            assert got[part][key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    counts = [b["count"] for b in got["reliability"]["bins"]]
    assert counts == [b["count"] for b in expected["reliability"]["bins"]]  # counts are exact


@pytest.mark.parametrize(
    "logits", ["logits-*.npy", "fixed.parquet", "per-class.parquet", "lists.parquet"], ids=lambda s: s.split(".")[0]
)
def test_a_source_gives_the_numbers_inline_tensors_give(
    api: TestClient, root: Path, inline: dict[str, Any], logits: str
) -> None:
    labels = root / ("labels.npy" if logits.endswith(".npy") or logits == "lists.parquet" else logits)
    got = evaluate(api, {"source": {"logits": str(root / logits), "labels": str(labels)}})
    same_numbers(got, inline)
    assert api.get(f"/v1/evaluations/{got['id']}").json()["metrics"] == got["metrics"]  # stored


def test_sources_mix_with_inline_tensors_and_slices(api: TestClient, root: Path, data: dict[str, np.ndarray]) -> None:
    region = np.where(np.arange(N) % 3 == 0, "north", "south").tolist()
    arrays = {"logits": data["logits"], "labels": data["labels"], "sample_weight": data["weights"]}
    expected = multipart(api, arrays, {"slices": {"region": region}, "store": False})
    mixed = {"source": {"logits": str(root / "logits-*.npy"), "sample_weight": str(root / "weights.npy")},
             "labels": data["labels"].tolist(), "slices": {"region": region}}  # fmt: skip
    got = evaluate(api, mixed)
    same_numbers(got, expected)
    for group in ("north", "south"):
        assert got["slices"]["region"][group]["metrics"]["accuracy"] == pytest.approx(
            expected["slices"]["region"][group]["metrics"]["accuracy"], rel=1e-12
        )


def test_an_fsspec_url_is_read_by_byte_ranges(
    api: TestClient, inline: dict[str, Any], data: dict[str, np.ndarray]
) -> None:
    memory = fsspec.filesystem("memory")
    for name, array in (("logits", data["logits"]), ("labels", data["labels"])):
        buffer = io.BytesIO()
        np.save(buffer, array)
        memory.pipe(f"/caliper/eval/{name}.npy", buffer.getvalue())
    got = evaluate(api, {"source": {"logits": "memory://caliper/eval/logits.npy",
                                    "labels": "memory://caliper/eval/labels.npy"}})  # fmt: skip
    same_numbers(got, inline)


def test_a_source_runs_as_a_job_with_progress_over_its_rows(
    api: TestClient, root: Path, inline: dict[str, Any]
) -> None:
    body = {**METRICS, "source": {"logits": str(root / "logits-*.npy"), "labels": str(root / "labels.npy")}}
    job = api.post("/v1/evaluations", json=body, headers=ASYNC).json()
    done = api.app.state.resources.jobs.wait(job["id"], 60)  # type: ignore[attr-defined]
    assert done.state == "succeeded", done.error
    assert done.progress.model_dump() == {"done": N, "total": N, "unit": "rows"}
    assert done.result is not None
    same_numbers(done.result, inline)


def bad_sources(root: Path, tmp: Path) -> list[tuple[str, dict[str, str], str]]:
    outside = tmp / "outside.npy"
    np.save(outside, np.zeros((N, C), np.float32))
    link = root / "link.npy"
    if not link.exists():
        os.symlink(outside, link)
    np.save(root / "short-labels.npy", np.zeros(N - 1, np.int64))
    np.save(root / "strings.npy", np.array(["a"] * N))
    np.save(root / "odd-00.npy", np.zeros((10, C), np.float32))
    np.save(root / "odd-01.npy", np.zeros((10, C), np.float64))
    (root / "not.npy").write_bytes(b"hello")
    labels = str(root / "labels.npy")
    return [
        ("outside the roots", {"logits": str(outside), "labels": labels}, "source.logits"),
        ("dot-dot escape", {"logits": f"{root}/../{outside.parent.name}/outside.npy", "labels": labels},
         "source.logits"),
        ("symbolic link out", {"logits": str(link), "labels": labels}, "source.logits"),
        ("relative path", {"logits": "logits-00.npy", "labels": labels}, "source.logits"),
        ("missing file", {"logits": str(root / "nope.npy"), "labels": labels}, "source.logits"),
        ("glob of nothing", {"logits": str(root / "nope-*.npy"), "labels": labels}, "source.logits"),
        ("url not allowed", {"logits": "memory://elsewhere/x.npy", "labels": labels}, "source.logits"),
        ("url with ..", {"logits": "memory://caliper/../elsewhere/x.npy", "labels": labels}, "source.logits"),
        ("rows differ", {"logits": str(root / "logits-*.npy"), "labels": str(root / "short-labels.npy")},
         "source.labels"),
        ("not numeric", {"logits": str(root / "strings.npy"), "labels": labels}, "source.logits"),
        ("shard dtypes differ", {"logits": str(root / "odd-*.npy"), "labels": labels}, "source.logits"),
        ("not an npy file", {"logits": str(root / "not.npy"), "labels": labels}, "source.logits"),
        ("no such column", {"logits": str(root / "lists.parquet"), "labels": str(root / "lists.parquet")},
         "source.labels"),
        ("unknown field", {"embeddings": labels}, "source"),
    ]  # fmt: skip


def test_every_bad_source_is_a_422_naming_it_and_stores_nothing(
    api: TestClient, source_app: FastAPI, root: Path, tmp_path: Path
) -> None:
    before = count_rows(source_app)
    for name, source, field in bad_sources(root, tmp_path):
        response = api.post("/v1/evaluations", json={"source": source})
        assert_problem(response, 422, field)
        assert response.status_code == 422, name
    twice = api.post("/v1/evaluations", json={"source": {"labels": str(root / "labels.npy")},
                                              "logits": [[0.0] * C] * N, "labels": [0] * N})  # fmt: skip
    assert_problem(twice, 422, "source.labels")
    assert count_rows(source_app) == before


def test_without_roots_no_local_file_is_read(tmp_path: Path, root: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'caliper.db'}", artifact_dir=tmp_path / "artifacts")
    upgrade(settings)
    app = create_app(settings)
    with TestClient(app, base_url=LOCAL) as client:
        response = client.post("/v1/evaluations", json={"source": {"logits": str(root / "logits-00.npy")}})
    app.state.resources.close()
    assert_problem(response, 422, "source.logits")
    assert "sets no CALIPER_DATA_ROOTS" in response.json()["detail"]

"""Multilabel evaluations that stream their logits (api.md, "Multi-label, extreme, cosine-margin and bag-level
evaluation", with "Jobs, data sources and scale-out" and "Models"): logits read from files, or an uploaded
tagger's outputs run chunk by chunk, with the label sets given whole (CSR) and sliced per chunk, or multi-hot
targets streamed beside; each equals the in-memory evaluation of the same logits; a row without a true label
in a late chunk is a 422 naming its row, and nothing is stored."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests import onnx_models
from tests.conftest import LOCAL, count_rows, files_app
from tests.test_api_bad_input import assert_problem
from tests.test_multilabel import csr

N, C, D = 700, 5, 6
TERMS = {
    "metrics": [{"name": "precision_at_k", "k": 2}, {"name": "ndcg_at_k", "k": 3}, "hamming_loss", "macro_f1"],
    "losses": ["bce", "decoupled_softmax"],
}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    truth = (rng.random((N, C)) < 0.35).astype(np.float32)
    truth[np.arange(N), rng.integers(0, C, N)] = 1.0
    x = rng.normal(size=(N, D)).astype(np.float32)
    return {"truth": truth, "x": x, "logits": (rng.normal(size=(N, C)) + 2 * truth - 1).astype(np.float32)}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Path:
    folder = tmp_path_factory.mktemp("multilabel-data")
    for k, rows in enumerate(np.array_split(np.arange(N), 3)):
        np.save(folder / f"logits-{k}.npy", data["logits"][rows])
    np.save(folder / "targets.npy", data["truth"])
    np.save(folder / "x.npy", data["x"])
    return folder


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[TestClient]:
    app: FastAPI = files_app(tmp_path_factory.mktemp("multilabel"), root, chunk_size=64, model_batch_rows=50)
    with TestClient(app, base_url=LOCAL) as client:
        yield client
    app.state.resources.close()


def parts(options: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    return {"request": (None, json.dumps(options)), **{k: (f"{k}.npy", npy(v)) for k, v in arrays.items()}}


def numbers(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 201, answer.text
    return {"losses": answer.json()["losses"], "metrics": answer.json()["metrics"], "n": answer.json()["n"]}


def test_logits_from_files_equal_the_inline_evaluation(
    api: TestClient, data: dict[str, np.ndarray], root: Path
) -> None:
    indices, offsets = csr(data["truth"])
    inline = numbers(api.post("/v1/evaluations", files=parts({"task": "multilabel", **TERMS}, {
        "logits": data["logits"], "label_sets.indices": indices, "label_sets.offsets": offsets})))  # fmt: skip
    from_files = {"task": "multilabel", "source": {"logits": f"{root}/logits-*.npy"}, **TERMS}
    streamed = api.post("/v1/evaluations", files=parts(from_files, {"label_sets.indices": indices,
                                                                   "label_sets.offsets": offsets}))  # fmt: skip
    dense = api.post("/v1/evaluations", json={**from_files, "source": {"logits": f"{root}/logits-*.npy",
                                                                        "targets": f"{root}/targets.npy"}})  # fmt: skip
    for answer in (streamed, dense):
        got = numbers(answer)
        assert got["n"] == N
        for kind in ("losses", "metrics"):
            for name, value in inline[kind].items():
                assert got[kind][name] == pytest.approx(value, rel=1e-9), name


def test_a_tagger_model_is_evaluated_chunk_by_chunk(api: TestClient, data: dict[str, np.ndarray], root: Path) -> None:
    onnx_bytes, weights = onnx_models.mlp(d=D, hidden=8, classes=C, seed=4)
    files = {"file": ("tagger.onnx", onnx_bytes, "application/octet-stream")}
    model = api.post("/v1/models", files=files, data={"request": json.dumps({"name": "tagger"})})
    assert model.status_code == 201, model.text
    hidden = np.maximum(data["x"] @ weights.w1.astype(np.float32) + weights.b1.astype(np.float32), 0)
    logits = hidden @ weights.w2.astype(np.float32) + weights.b2.astype(np.float32)
    sets = [np.flatnonzero(row).tolist() for row in data["truth"]]
    inline = numbers(api.post("/v1/evaluations", json={"task": "multilabel", "logits": logits.tolist(),
                                                       "label_sets": sets, **TERMS}))  # fmt: skip
    body = {"task": "multilabel", "inputs": {"x": data["x"].tolist()}, "label_sets": sets, **TERMS}
    evaluated = api.post(f"/v1/models/{model.json()['id']}/evaluations", json=body)
    got = numbers(evaluated)
    assert evaluated.json()["model"] == "tagger"
    for kind in ("losses", "metrics"):
        for name, value in inline[kind].items():
            assert got[kind][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    from_files = {
        "task": "multilabel",
        "source": {"inputs.x": f"{root}/x.npy", "targets": f"{root}/targets.npy"},
        **TERMS,
    }
    assert (
        numbers(api.post(f"/v1/models/{model.json()['id']}/evaluations", json=from_files))["metrics"] == got["metrics"]
    )


def test_a_late_row_without_a_label_is_a_422_and_nothing_is_stored(
    api: TestClient, data: dict[str, np.ndarray], root: Path
) -> None:
    sets = [np.flatnonzero(row).tolist() for row in data["truth"]]
    sets[N - 5] = []  # in the last chunk
    before = count_rows(api.app)  # type: ignore[arg-type]
    body = {"task": "multilabel", "source": {"logits": f"{root}/logits-*.npy"}, "label_sets": sets, **TERMS}
    answer = api.post("/v1/evaluations", json=body)
    assert_problem(answer, 422, "label_sets")
    assert f"row {N - 5}" in answer.json()["detail"]
    too_short = {**body, "label_sets": sets[:-1]}
    assert_problem(api.post("/v1/evaluations", json=too_short), 422, "label_sets.offsets")
    refused = {
        "task": "multilabel",
        "source": {"logits": f"{root}/logits-*.npy", "labels": f"{root}/targets.npy"},
        "label_sets": sets,
    }
    assert_problem(api.post("/v1/evaluations", json=refused), 422, "labels")
    assert count_rows(api.app) == before  # type: ignore[arg-type]

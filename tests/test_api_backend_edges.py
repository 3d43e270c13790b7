"""Inputs that PostgreSQL refuses where SQLite lets them through, and shapes numpy cannot hold (issue 25):
each answers a 4xx, or is stored as its answer shows it, on both backends (CI runs this on Postgres too)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.api.main import create_app
from app.calibration.schemas import METHODS
from app.config import Settings
from tests import onnx_models
from tests.conftest import LOCAL
from tests.test_api_bad_input import assert_problem
from tests.test_api_hostile import EVALUATION, _stored
from tests.test_api_models import upload

HUGE = 1e308  # softmax of such logits is exactly one-hot: the NLL of a wrong label is infinite
OVERFLOWING = np.array([[HUGE, -HUGE, 0.0], [0.0, HUGE, -HUGE], [-HUGE, 0.0, HUGE], [HUGE, 0.0, -HUGE]] * 3)
WRONG_LABELS = [0, 1, 2, 1] * 3


@pytest.mark.parametrize("method", list(METHODS))
def test_a_fit_report_with_infinite_values_is_stored_as_it_is_answered(client: TestClient, method: str) -> None:
    """JSON has no Infinity: the answer shows null, and the stored report is the same (a 500 on Postgres)."""
    response = client.post(
        "/v1/calibrators", json={"method": method, "logits": OVERFLOWING.tolist(), "labels": WRONG_LABELS}
    )
    if response.status_code == 422:  # the method's own output is not finite: refused, nothing stored
        assert_problem(response, 422)
        assert _stored(client) == 0
        return
    assert response.status_code == 201, response.text
    assert response.json()["fit_report"]["before"]["nll"] is None
    assert client.get(f"/v1/calibrators/{response.json()['id']}").json() == response.json()


def test_a_detector_fit_with_a_nan_statistic_is_stored_as_it_is_answered(client: TestClient) -> None:
    features = [[HUGE, 1.0], [1.0, -HUGE], [3.0, 1.0]] * 3
    params = {"weight": [[1.0, 1.0], [2.0, 1.0]], "bias": [0.0, 0.0], "dim": 1}
    response = client.post("/v1/detectors", json={"method": "vim", "features": features, "params": params})
    assert response.status_code == 201, response.text
    assert response.json()["fit_info"]["alpha"] is None
    assert client.get(f"/v1/detectors/{response.json()['id']}").json() == response.json()


@pytest.mark.parametrize("where", ["form", "request"])
def test_a_nul_in_an_upload_field_is_400(client: TestClient, where: str) -> None:
    files = {"file": ("model.onnx", onnx_models.mlp()[0], "application/octet-stream")}
    data = {"name": "a\x00b"} if where == "form" else {"request": json.dumps({"name": "a\x00b"})}
    assert_problem(client.post("/v1/models", files=files, data=data), 400)
    data = {"name": "m", "feature_outputs": "emb\x00"} if where == "form" else {"request": '{"name": "m", "name": "n"}'}
    assert_problem(client.post("/v1/models", files=files, data=data), 400)
    assert _stored(client) == 0


@pytest.mark.parametrize("name", ["o" * 257, "lo\x00gits", "lo\ngits"])
def test_an_onnx_output_name_the_database_cannot_hold_is_422(client: TestClient, name: str) -> None:
    model = onnx.load_from_string(onnx_models.mlp()[0])
    for node in model.graph.node:
        node.input[:] = [name if i == "embedding" else i for i in node.input]
        node.output[:] = [name if o == "embedding" else o for o in node.output]
    next(o for o in model.graph.output if o.name == "embedding").name = name
    response = upload(client, model.SerializeToString())
    assert_problem(response, 422, "file")
    assert _stored(client) == 0


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**64], [2**64, 0], [0, 2**63 - 1], [0, 2**31]], ids=str)
def test_a_zero_size_shape_with_an_overflowing_dimension_is_422(client: TestClient, shape: list[int]) -> None:
    logits = {"dtype": "float32", "shape": shape, "data_b64": ""}
    assert_problem(client.post("/v1/evaluations", json={"logits": logits, "labels": [0]}), 422, "logits")
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    files = {"request": (None, "{}", "application/json"), "logits": ("l.npy", npy), "labels": ("y.npy", _npy([0]))}
    assert_problem(client.post("/v1/evaluations", files=files), 422, "logits")
    assert _stored(client) == 0


def _npy(values: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values))
    return buffer.getvalue()


def test_an_npy_header_left_unterminated_is_422(client: TestClient) -> None:
    unterminated = _npy(np.zeros((2, 3))).replace(b"}", b" ")
    files = {
        "request": (None, "{}", "application/json"),
        "logits": ("l.npy", unterminated),
        "labels": ("y.npy", _npy([0, 1])),
    }
    assert_problem(client.post("/v1/evaluations", files=files), 422, "logits")


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "relative_mahalanobis"])
def test_a_detector_label_beyond_the_rows_is_422_before_any_allocation(client: TestClient, method: str) -> None:
    """A label of 2**33 named 2**33 classes: bincount asked for 64 GiB."""
    body = {"method": method, "features": [[0.0, 1.0], [1.0, 0.5], [2.0, 1.0]], "labels": [0, 2**33, 1]}
    assert_problem(client.post("/v1/detectors", json=body), 422, "features")


def _unmigrated_url(settings: Settings, tmp_path: Path) -> str:
    """A database that answers and has no tables: a new SQLite file, or a new PostgreSQL database."""
    if settings.database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'empty.db'}"
    engine = create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS caliper_unmigrated"))
        connection.execute(text("CREATE DATABASE caliper_unmigrated"))
    engine.dispose()
    return settings.database_url.rsplit("/", 1)[0] + "/caliper_unmigrated"


def test_an_unmigrated_database_answers_a_final_503_naming_the_fix(settings: Settings, tmp_path: Path) -> None:
    """Not "unreachable; retry later" with Retry-After (which clients retried for minutes): a 503 whose type
    says migrations are pending, without Retry-After, on /v1 (with and without an Idempotency-Key) and /v2."""
    unmigrated = settings.model_copy(update={"database_url": _unmigrated_url(settings, tmp_path)})
    with TestClient(create_app(unmigrated), raise_server_exceptions=False, base_url=LOCAL) as client:
        for headers in ({}, {"Idempotency-Key": "k1"}):
            response = client.post("/v1/evaluations", json=EVALUATION, headers=headers)
            assert_problem(response, 503)
            assert response.json()["type"].endswith("/migrations-pending") and "retry-after" not in response.headers
            assert "caliper db upgrade" in response.json()["detail"]
        assert_problem(client.get("/v1/models"), 503)
        v2 = client.get("/v2/models/mlp")
        assert v2.status_code == 503 and "caliper db upgrade" in v2.json()["error"]

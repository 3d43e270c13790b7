"""/v1/models: upload, intake refusals, storage of the bytes, predict against a plain onnxruntime session
and numpy oracles, and models that exceed their limits or kill their worker."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from caliper_client.wire import encode_npy, encode_tensor_object
from fastapi.testclient import TestClient

from app.api.observability import JsonLines
from tests import onnx_models
from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem


def upload(client: TestClient, data: bytes, **request: Any) -> Any:
    request = {"name": "mlp", **request}
    files = {"file": ("model.onnx", data, "application/octet-stream")}
    return client.post("/v1/models", files=files, data={"request": json.dumps(request)})


def resources(client: TestClient) -> Any:
    return client.app.state.resources  # type: ignore[attr-defined]


def plain_run(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}), strict=True))


def fit_temperature(client: TestClient, logits: np.ndarray, labels: np.ndarray) -> Any:
    body = {"method": "temperature", "logits": logits.tolist(), "labels": labels.tolist()}
    return client.post("/v1/calibrators", json=body).json()


def fit_mahalanobis(client: TestClient, features: np.ndarray, labels: np.ndarray, ridge: float = 0.1) -> Any:
    body = {"method": "mahalanobis", "features": features.tolist(), "labels": labels.tolist()}
    return client.post("/v1/detectors", json={**body, "params": {"ridge": ridge}}).json()


def test_upload_describes_the_model_and_keeps_its_bytes(client: TestClient) -> None:
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3)
    response = upload(client, data, embedding_output="embedding", tags={"team": "a"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 6]}]
    assert {o["name"]: o["shape"] for o in body["outputs"]} == {"logits": [-1, 3], "embedding": [-1, 5]}
    assert body["logits_output"] == "logits" and body["embedding_output"] == "embedding" and body["classes"] == 3
    assert body["opset"] == onnx_models.OPSET and body["tags"] == {"team": "a"}
    assert client.get(f"/v1/models/{body['id']}").json() == body
    assert client.get(f"/v1/models/{body['id']}/onnx").content == data
    assert [m["id"] for m in client.get("/v1/models", params={"name": "mlp"}).json()["items"]] == [body["id"]]
    assert client.get("/v1/models", params={"name": "other"}).json()["items"] == []


def test_a_symbolic_class_dimension_is_learnt_on_the_first_run(client: TestClient) -> None:
    """api.md: `classes` is null until the model's first run, then C (issue 25: it stayed null)."""
    model = onnx.load_from_string(onnx_models.mlp(classes=4)[0])
    logits = next(o for o in model.graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = "C"
    uploaded = upload(client, model.SerializeToString()).json()
    assert uploaded["classes"] is None
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    evaluation = client.post(
        f"/v1/models/{uploaded['id']}/evaluations", json={"inputs": {"x": x.tolist()}, "labels": [0, 1, 3]}
    )
    assert evaluation.status_code == 201, evaluation.text
    assert client.get(f"/v1/models/{uploaded['id']}").json()["classes"] == 4
    other = upload(client, model.SerializeToString(), name="other").json()
    assert client.post(f"/v1/models/{other['id']}/predict", json={"inputs": {"x": x.tolist()}}).status_code == 200
    assert client.get(f"/v1/models/{other['id']}").json()["classes"] == 4


def test_the_same_bytes_share_one_file_removed_with_the_last_model(client: TestClient) -> None:
    data, _ = onnx_models.mlp()
    first, second = upload(client, data).json(), upload(client, data).json()
    path = resources(client).artifacts.path(first["sha256"])
    assert path.read_bytes() == data
    assert client.delete(f"/v1/models/{first['id']}").status_code == 204
    assert path.exists()
    assert client.delete(f"/v1/models/{second['id']}").status_code == 204
    assert not path.exists()
    assert_problem(client.get(f"/v1/models/{second['id']}"), 404)
    assert_problem(client.delete(f"/v1/models/{second['id']}"), 404)


def test_a_deleted_models_predict_is_unknown_at_once_though_its_record_was_read_recently(client: TestClient) -> None:
    data, _ = onnx_models.mlp()
    model = upload(client, data).json()
    predict, rows = f"/v1/models/{model['id']}/predict", {"inputs": {"x": [[0.5] * 6, [1.0] * 6]}}
    assert client.post(predict, json=rows).status_code == 200  # its record is now kept for a second
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert_problem(client.post(predict, json=rows), 404)


def test_form_fields_work_like_the_request_part(client: TestClient) -> None:
    data, _ = onnx_models.mlp()
    files = {"file": ("m.onnx", data, "application/octet-stream")}
    fields = {"name": "by-form", "embedding_output": "embedding", "tags": json.dumps({"k": "v"})}
    body = client.post("/v1/models", files=files, data=fields).json()
    assert body["name"] == "by-form" and body["embedding_output"] == "embedding" and body["tags"] == {"k": "v"}


HOSTILE: list[tuple[str, bytes, dict[str, Any], str, str]] = [
    ("not_a_model", b"\x00\x01 this is not a protobuf \xff" * 10, {}, "file", "not an ONNX model"),
    ("empty", b"", {}, "file", "empty"),
    ("truncated", onnx_models.mlp()[0][:200], {}, "file", "not an ONNX model"),
    ("external_data", onnx_models.external_data(), {}, "file", "external data"),
    ("custom_domain", onnx_models.custom_domain(), {}, "file", "com.example"),
    ("future_opset", onnx_models.future_opset(), {}, "file", "opset 99"),
    ("missing_logits_output", onnx_models.mlp()[0], {"logits_output": "nope"}, "logits_output", "no output"),
    (
        "ambiguous_outputs",
        onnx_models.mlp()[0],
        {"logits_output": None, "embedding_output": "zz"},
        "embedding_output",
        "no output",
    ),
    (
        "embedding_not_a_matrix",
        onnx_models.mlp()[0],
        {"logits_output": "embedding", "embedding_output": "logits", "feature_outputs": ["x"]},
        "feature_outputs",
        "no output",
    ),
]


@pytest.mark.parametrize(("case", "data", "request_fields", "field", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_models_get_a_422_naming_the_fault_and_store_nothing(
    client: TestClient, case: str, data: bytes, request_fields: dict[str, Any], field: str, message: str
) -> None:
    response = upload(client, data, **request_fields)
    assert_problem(response, 422)
    assert response.json()["errors"][0]["field"] == field and message in response.json()["detail"], response.text
    assert count_rows(client.app)["models"] == 0  # type: ignore[arg-type]
    assert list(resources(client).artifacts.root.iterdir()) == []  # no file, not even a temporary one


def test_an_oversized_model_is_413_and_leaves_no_file(client: TestClient) -> None:
    data = onnx_models.mlp(d=600, hidden=500)[0]  # ~1.2 MB, over the suite's 1 MiB CALIPER_MAX_MODEL_BYTES
    assert len(data) > resources(client).settings.max_model_bytes
    assert_problem(upload(client, data), 413)
    assert list(resources(client).artifacts.root.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_equals_a_plain_session_and_the_numpy_oracle(client: TestClient, dtype: type) -> None:
    data, weights = onnx_models.mlp(dtype=dtype)
    model = upload(client, data, embedding_output="embedding").json()
    x = np.random.default_rng(1).normal(size=(150, 6)).astype(dtype)  # 150 rows: three worker calls of 64
    out = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": x.tolist()}, "return_embedding": True})
    assert out.status_code == 200, out.text
    got = out.json()
    expected = plain_run(data, x)
    np.testing.assert_array_equal(np.asarray(got["logits"], dtype), expected["logits"])
    np.testing.assert_array_equal(np.asarray(got["embedding"], dtype), expected["embedding"])
    logits, _ = weights.forward(x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got["probabilities"], p, rtol=tol, atol=tol)
    assert got["prediction"] == np.argmax(p, axis=1).tolist()
    np.testing.assert_allclose(got["confidence"], p.max(1), rtol=tol, atol=tol)


def test_predict_with_heads_equals_the_heads_applied_to_the_model_outputs(client: TestClient) -> None:
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64)
    model = upload(client, data, embedding_output="embedding").json()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 6))
    outputs = plain_run(data, x)
    labels = np.argmax(outputs["logits"] + rng.normal(size=(120, 3)), axis=1)
    calibrator = fit_temperature(client, outputs["logits"], labels)
    detector = fit_mahalanobis(client, outputs["embedding"], labels)
    got = client.post(
        f"/v1/models/{model['id']}/predict",
        json={"inputs": {"x": x.tolist()}, "calibrator_id": calibrator["id"], "detector_id": detector["id"]},
    ).json()
    applied = client.post(f"/v1/calibrators/{calibrator['id']}/apply", json={"logits": outputs["logits"].tolist()})
    np.testing.assert_allclose(got["probabilities"], applied.json()["probabilities"], rtol=1e-12, atol=1e-15)
    scored = client.post(f"/v1/detectors/{detector['id']}/score", json={"features": outputs["embedding"].tolist()})
    np.testing.assert_allclose(got["ood_score"], scored.json()["scores"], rtol=1e-12, atol=1e-12)


def test_a_fixed_batch_dimension_runs_in_padded_batches(client: TestClient) -> None:
    data, _ = onnx_models.mlp(batch=4)
    model = upload(client, data).json()
    assert model["inputs"][0]["shape"] == [4, 6]
    x = np.random.default_rng(3).normal(size=(10, 6)).astype(np.float32)  # 4 + 4 + 2 (padded to 4)
    got = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": x.tolist()}}).json()
    expected = np.concatenate(
        [plain_run(data, np.resize(x[i : i + 4], (4, 6)))["logits"] for i in (0, 4)]
        + [plain_run(data, np.concatenate([x[8:], x[9:], x[9:]]))["logits"][:2]]
    )
    np.testing.assert_array_equal(np.asarray(got["logits"], np.float32), expected)


def test_predict_as_npz(client: TestClient) -> None:
    data, _ = onnx_models.mlp()
    model = upload(client, data).json()
    x = np.ones((3, 6), np.float32)
    response = client.post(
        f"/v1/models/{model['id']}/predict", json={"inputs": {"x": x.tolist()}}, headers={"accept": "application/x-npz"}
    )
    import io

    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["logits"], plain_run(data, x)["logits"])


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing", {}, "inputs.x"),
    ("unknown", {"x": np.ones((2, 6)).tolist(), "y": [[1.0]]}, "inputs.y"),
    ("trailing_shape", {"x": np.ones((2, 5)).tolist()}, "inputs.x"),
    ("rank", {"x": np.ones((2, 6, 1)).tolist()}, "inputs.x"),
    ("nan", {"x": encode_tensor_object(np.full((1, 6), np.nan, np.float32))}, "inputs.x"),
    ("empty", {"x": {"dtype": "float32", "shape": [0, 6], "data_b64": ""}}, "inputs.x"),
    ("wrong_dtype", {"x": {"dtype": "bool", "shape": [1, 6], "data_b64": "AQEBAQEB"}}, "inputs.x"),
    ("int_tensor_for_float", {"x": encode_tensor_object(np.ones((1, 6), np.int64))}, "inputs.x"),
    ("int32_tensor_for_float", {"x": encode_tensor_object(np.ones((1, 6), np.int32))}, "inputs.x"),
]


@pytest.mark.parametrize(("case", "inputs", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_422_naming_the_input(client: TestClient, case: str, inputs: dict[str, Any], field: str) -> None:
    model = upload(client, onnx_models.mlp()[0]).json()
    response = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": inputs})
    assert_problem(response, 422)
    assert response.json()["errors"][0]["field"] == field, response.text


def test_heads_that_do_not_fit_are_refused_before_running(client: TestClient) -> None:
    model = upload(client, onnx_models.mlp(classes=3)[0], embedding_output="embedding").json()
    rng = np.random.default_rng(4)
    calibrator = fit_temperature(client, rng.normal(size=(20, 4)), np.arange(20) % 4)  # C = 4, the model has 3
    detector = fit_mahalanobis(client, rng.normal(size=(30, 7)), np.arange(30) % 3, ridge=0.0)  # D = 7, not 5
    x = {"x": np.ones((2, 6)).tolist()}
    for field, head in (("calibrator_id", calibrator["id"]), ("detector_id", detector["id"])):
        response = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": x, field: head})
        assert_problem(response, 422)
        assert response.json()["errors"][0]["field"] == field, response.text
        evaluation = {"inputs": x, "labels": [0, 1], field: head} | (
            {"ood_inputs": x} if field == "detector_id" else {}
        )
        response = client.post(f"/v1/models/{model['id']}/evaluations", json=evaluation)  # the same check
        assert_problem(response, 422)
        assert response.json()["errors"][0]["field"] == field, response.text
    assert_problem(client.post(f"/v1/models/{model['id']}/predict", json={"inputs": x, "sdm_id": "nope"}), 404)
    assert_problem(client.post("/v1/models/nope/predict", json={"inputs": x}), 404)


class FormattedLines(logging.Handler):
    """Log records as the server writes them (JSON lines, formatted when emitted, in the emitting thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonLines())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_model_that_allocates_too_much_answers_422_and_the_service_keeps_serving(client: TestClient) -> None:
    model = upload(client, onnx_models.huge_allocation(), name="greedy").json()
    handler = FormattedLines()
    logging.getLogger("caliper.models").addHandler(handler)
    try:
        response = client.post(
            f"/v1/models/{model['id']}/predict",
            json={"inputs": {"x": [[1.0, 2.0]]}},
            headers={"X-Request-ID": "greedy-model-run"},
        )
    finally:
        logging.getLogger("caliper.models").removeHandler(handler)
    assert_problem(response, 422)
    assert response.json()["type"].endswith("model-limits"), response.text
    replaced = [json.loads(line) for line in handler.lines if "replaced" in line]
    assert [entry["request_id"] for entry in replaced] == ["greedy-model-run"], (
        handler.lines
    )  # the request's id follows
    good = upload(client, onnx_models.mlp()[0]).json()
    ok = client.post(f"/v1/models/{good['id']}/predict", json={"inputs": {"x": np.ones((1, 6)).tolist()}})
    assert ok.status_code == 200, ok.text


def test_a_model_that_runs_too_long_answers_422_and_its_worker_is_replaced(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = resources(client).workers
    model = upload(client, onnx_models.long_loop(), name="slow").json()
    monkeypatch.setattr(pool, "limits", replace(pool.limits, timeout_s=1.0))
    response = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": [[1.0, 2.0]]}})
    assert_problem(response, 422)
    assert "CALIPER_MODEL_TIMEOUT_S" in response.json()["detail"]
    good = upload(client, onnx_models.mlp()[0]).json()
    assert (
        client.post(f"/v1/models/{good['id']}/predict", json={"inputs": {"x": np.ones((1, 6)).tolist()}}).status_code
        == 200
    )


def test_a_worker_killed_mid_request_answers_422_and_the_next_request_succeeds(client: TestClient) -> None:
    pool = resources(client).workers
    model = upload(client, onnx_models.long_loop(), name="slow").json()
    outcome: dict[str, Any] = {}

    def call() -> None:
        outcome["response"] = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": [[1.0, 2.0]]}})

    thread = threading.Thread(target=call)
    thread.start()
    victim = None
    for _ in range(200):  # the busy worker: the one not idle
        busy = [w for w in list(pool._busy) if w.process.is_alive()]
        if busy:
            victim = busy[0]
            break
        threading.Event().wait(0.05)
    assert victim is not None
    os.kill(victim.process.pid, signal.SIGKILL)
    thread.join(timeout=30)
    assert_problem(outcome["response"], 422)
    assert "crashed" in outcome["response"].json()["detail"]
    good = upload(client, onnx_models.mlp()[0]).json()
    assert (
        client.post(f"/v1/models/{good['id']}/predict", json={"inputs": {"x": np.ones((1, 6)).tolist()}}).status_code
        == 200
    )


def test_a_worker_that_died_while_idle_is_replaced_without_failing_the_next_request(client: TestClient) -> None:
    """Issue 25: the next, unrelated request got a 422 "the model crashed its worker"."""
    pool = resources(client).workers
    model = upload(client, onnx_models.mlp()[0]).json()
    x = {"inputs": {"x": np.ones((1, 6)).tolist()}}
    assert client.post(f"/v1/models/{model['id']}/predict", json=x).status_code == 200
    idle = [w for w in list(pool._alive) if w not in pool._busy]
    assert idle
    for worker in idle:
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(10)
    for _ in range(len(idle) + 1):  # every pool slot is taken once at least
        assert client.post(f"/v1/models/{model['id']}/predict", json=x).status_code == 200
    assert not [w for w in list(pool._alive) if not w.process.is_alive()]


def test_fitting_from_a_model_equals_fitting_on_what_the_model_produces(client: TestClient) -> None:
    """One code path resolves `model_id` + `inputs` into the tensors every fitter reads."""
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64)
    model = upload(client, data, embedding_output="embedding").json()
    rng = np.random.default_rng(5)
    x, x_val = rng.normal(size=(90, 6)), rng.normal(size=(40, 6))
    out, out_val = plain_run(data, x), plain_run(data, x_val)
    labels = np.argmax(out["logits"] + rng.normal(size=(90, 3)), axis=1)
    labels_val = np.argmax(out_val["logits"] + rng.normal(size=(40, 3)), axis=1)
    from_model = client.post(
        "/v1/calibrators",
        json={
            "method": "temperature",
            "model_id": model["id"],
            "inputs": {"x": x.tolist()},
            "labels": labels.tolist(),
            "validation": {"inputs": {"x": x_val.tolist()}, "labels": labels_val.tolist()},
        },
    )
    assert from_model.status_code == 201, from_model.text
    given = client.post(
        "/v1/calibrators",
        json={
            "method": "temperature",
            "logits": out["logits"].tolist(),
            "labels": labels.tolist(),
            "validation": {"logits": out_val["logits"].tolist(), "labels": labels_val.tolist()},
        },
    ).json()
    assert from_model.json()["fitted"] == given["fitted"] and from_model.json()["fit_report"] == given["fit_report"]
    detector = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "model_id": model["id"],
            "inputs": {"x": x.tolist()},
            "labels": labels.tolist(),
            "params": {"ridge": 0.1},
        },
    )
    assert detector.status_code == 201, detector.text
    direct = fit_mahalanobis(client, out["embedding"], labels)
    probe = {"features": out_val["embedding"].tolist()}
    assert (
        client.post(f"/v1/detectors/{detector.json()['id']}/score", json=probe).json()
        == client.post(f"/v1/detectors/{direct['id']}/score", json=probe).json()
    )
    sets = {"support": (x, out, labels), "calibration": (x_val, out_val, labels_val)}
    sdm = client.post(
        "/v1/sdm",
        json={
            "model_id": model["id"],
            "params": {"k": 10},
            **{k: {"inputs": {"x": v[0].tolist()}, "labels": v[2].tolist()} for k, v in sets.items()},
        },
    )
    assert sdm.status_code == 201, sdm.text
    sdm_direct = client.post(
        "/v1/sdm",
        json={
            "params": {"k": 10},
            **{
                k: {
                    "embeddings": v[1]["embedding"].tolist(),
                    "logits": v[1]["logits"].tolist(),
                    "labels": v[2].tolist(),
                }
                for k, v in sets.items()
            },
        },
    ).json()
    for key in ("q_min", "psi", "calibration"):
        assert sdm.json()[key] == sdm_direct[key]
    predicted = client.post(
        f"/v1/models/{model['id']}/predict", json={"inputs": {"x": x_val.tolist()}, "sdm_id": sdm.json()["id"]}
    )
    assert predicted.status_code == 200, predicted.text
    scored = client.post(
        f"/v1/sdm/{sdm_direct['id']}/score",
        json={"embeddings": out_val["embedding"].tolist(), "logits": out_val["logits"].tolist()},
    ).json()
    for column in ("q", "d", "probabilities", "high_reliability", "is_ood"):
        assert predicted.json()["sdm"][column] == scored[column], column


def test_inputs_need_a_model_and_a_model_needs_inputs_or_tensors_not_both(client: TestClient) -> None:
    data, _ = onnx_models.mlp(dtype=np.float64)
    model = upload(client, data).json()
    x = np.ones((8, 6)).tolist()
    stray = client.post("/v1/calibrators", json={"method": "temperature", "inputs": {"x": x}, "labels": [0] * 8})
    assert_problem(stray, 422)
    assert stray.json()["errors"][0]["field"] == "inputs.x"
    both = client.post(
        "/v1/calibrators",
        json={
            "method": "temperature",
            "model_id": model["id"],
            "inputs": {"x": x},
            "logits": np.ones((8, 3)).tolist(),
            "labels": [0] * 8,
        },
    )
    assert_problem(both, 422)
    assert both.json()["errors"][0]["field"] == "logits"
    no_embedding = client.post(
        "/v1/detectors", json={"method": "mahalanobis", "model_id": model["id"], "inputs": {"x": x}, "labels": [0] * 8}
    )
    assert_problem(no_embedding, 422)
    assert_problem(
        client.post(
            "/v1/calibrators", json={"method": "temperature", "model_id": "nope", "inputs": {"x": x}, "labels": [0] * 8}
        ),
        404,
    )


@pytest.mark.parametrize("with_heads", [False, True])
def test_evaluating_a_model_equals_evaluating_its_logits(client: TestClient, with_heads: bool) -> None:
    """150 rows in chunks of 64 (the suite's CALIPER_MODEL_BATCH_ROWS) fold into one evaluation state: the
    numbers, the stored per-row arrays and the gate's view equal an evaluation of the model's logits."""
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64)
    model = upload(client, data, embedding_output="embedding").json()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(150, 6))
    out = plain_run(data, x)
    labels = np.argmax(out["logits"] + rng.normal(size=(150, 3)), axis=1)
    heads: dict[str, Any] = {}
    if with_heads:
        calibrator = fit_temperature(client, out["logits"], labels)
        sdm = client.post(
            "/v1/sdm",
            json={
                "params": {"k": 10},
                **{
                    k: {
                        "embeddings": out["embedding"].tolist(),
                        "logits": out["logits"].tolist(),
                        "labels": labels.tolist(),
                    }
                    for k in ("support", "calibration")
                },
            },
        ).json()
        heads = {"calibrator_id": calibrator["id"], "sdm_id": sdm["id"]}
    options = {"labels": labels.tolist(), "losses": ["cross_entropy", "brier"], "per_sample": True, **heads}
    evaluated = client.post(f"/v1/models/{model['id']}/evaluations", json={"inputs": {"x": x.tolist()}, **options})
    assert evaluated.status_code == 201, evaluated.text
    extra = {"embeddings": out["embedding"].tolist()} if with_heads else {}
    direct = client.post("/v1/evaluations", json={"logits": out["logits"].tolist(), **extra, **options}).json()
    got = evaluated.json()
    assert got["model_id"] == model["id"] and got["model"] == "mlp" and direct["model_id"] is None
    # the same rows, summed in other chunks (the model's 64 rows, then the evaluator's): equal to rounding
    for ours, theirs in [
        (got["losses"], direct["losses"]),
        (got["metrics"], direct["metrics"]),
        *zip(got["reliability"]["bins"], direct["reliability"]["bins"], strict=True),
    ]:
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():  # null (an empty side or bin) on both sides
            assert ours[name] == (value if value is None else pytest.approx(value, rel=1e-12, abs=1e-15)), name
    for loss, values in direct["per_sample"].items():
        np.testing.assert_allclose(got["per_sample"][loss], values, rtol=1e-12, atol=1e-15)
    for key in ("dataset_fingerprint", "n", "classes"):
        assert got[key] == direct[key], key
    stored = client.get(f"/v1/evaluations/{got['id']}", params={"per_sample": "true"}).json()
    assert stored["model_id"] == model["id"] and stored["per_sample"] == got["per_sample"]
    gate = client.post(
        "/v1/gates",
        json={
            "candidate": got["id"],
            "baseline": direct["id"],
            "significance": 0.95,
            "rules": [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.0}],
        },
    )
    assert gate.json()["verdict"] == "pass" and gate.json()["rules"][0]["interval"] == [0.0, 0.0], gate.text


def test_a_model_evaluation_with_a_detector_adds_the_ood_separation(client: TestClient) -> None:
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64)
    model = upload(client, data, embedding_output="embedding").json()
    rng = np.random.default_rng(7)
    x, x_ood = rng.normal(size=(150, 6)), rng.normal(size=(70, 6)) * 4 + 3
    out, out_ood = plain_run(data, x), plain_run(data, x_ood)
    labels = np.argmax(out["logits"], axis=1)
    detector = fit_mahalanobis(client, out["embedding"], labels)
    body = {
        "inputs": {"x": x.tolist()},
        "labels": labels.tolist(),
        "detector_id": detector["id"],
        "ood_inputs": {"x": x_ood.tolist()},
    }
    evaluated = client.post(f"/v1/models/{model['id']}/evaluations", json=body)
    assert evaluated.status_code == 201, evaluated.text
    expected = client.post(
        "/v1/ood/evaluate",
        json={
            "detector_id": detector["id"],
            "features_in": out["embedding"].tolist(),
            "features_out": out_ood["embedding"].tolist(),
        },
    ).json()
    ood = evaluated.json()["ood"]
    for key in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "fpr_at_95_tpr_ood_positive", "detection_error"):
        assert ood[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    assert ood["n_in"] == 150 and ood["n_out"] == 70
    assert client.get(f"/v1/evaluations/{evaluated.json()['id']}").json()["ood"] == ood
    lone = client.post(f"/v1/models/{model['id']}/evaluations", json={**body, "detector_id": None})
    assert_problem(lone, 422)
    assert lone.json()["errors"][0]["field"] == "ood_inputs"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_several_inputs_and_an_nchw_image(client: TestClient, dtype: type) -> None:
    data = onnx_models.image_and_meta(dtype)
    model = upload(client, data).json()
    assert {i["name"]: (i["dtype"], i["shape"]) for i in model["inputs"]} == {
        "image": (np.dtype(dtype).name, [-1, 1, 4, 4]),
        "meta": ("int64", [-1, 2]),
    }
    rng = np.random.default_rng(8)
    image, meta = rng.normal(size=(90, 1, 4, 4)).astype(dtype), rng.integers(-5, 5, size=(90, 2))
    got = client.post(
        f"/v1/models/{model['id']}/predict", json={"inputs": {"image": image.tolist(), "meta": meta.tolist()}}
    )
    assert got.status_code == 200, got.text
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"image": image, "meta": meta.astype(np.int64)})
    np.testing.assert_array_equal(np.asarray(got.json()["logits"], dtype), expected)
    fractional = client.post(
        f"/v1/models/{model['id']}/predict",
        json={"inputs": {"image": image[:2].tolist(), "meta": (meta[:2] + 0.5).tolist()}},
    )
    assert_problem(fractional, 422)
    assert fractional.json()["errors"][0]["field"] == "inputs.meta"
    mismatched = client.post(
        f"/v1/models/{model['id']}/predict", json={"inputs": {"image": image[:3].tolist(), "meta": meta[:2].tolist()}}
    )
    assert_problem(mismatched, 422)
    # typed tensors keep their kind: a float tensor is never cast to the integer input, an integer .npy
    # never to the float one; within a kind (float64 to a float32 input, int32 to int64) they are cast
    typed = {"image": encode_tensor_object(image[:2].astype(np.float64)), "meta": encode_tensor_object(meta[:2])}
    assert client.post(f"/v1/models/{model['id']}/predict", json={"inputs": typed}).status_code == 200
    as_int32 = {**typed, "meta": encode_tensor_object(meta[:2].astype(np.int32))}
    assert client.post(f"/v1/models/{model['id']}/predict", json={"inputs": as_int32}).status_code == 200
    float_meta = {**typed, "meta": encode_tensor_object(meta[:2].astype(dtype))}
    refused = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": float_meta})
    assert_problem(refused, 422)
    assert refused.json()["errors"][0]["field"] == "inputs.meta" and "int64" in refused.json()["detail"]
    parts = {
        "inputs.image": ("image.npy", encode_npy(np.ones((2, 1, 4, 4), np.int64))),
        "inputs.meta": ("m.npy", encode_npy(meta[:2])),
    }
    refused = client.post(f"/v1/models/{model['id']}/predict", files=parts, data={"request": "{}"})
    assert_problem(refused, 422)
    assert refused.json()["errors"][0]["field"] == "inputs.image"


def test_a_worker_that_cannot_start_answers_503_and_stores_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = resources(client).workers
    pool.close()  # the idle workers go; new ones start with the limits below
    monkeypatch.setattr(pool, "limits", replace(pool.limits, memory_bytes=32 * 1024 * 1024))  # too little for ort
    response = upload(client, onnx_models.mlp()[0])
    assert_problem(response, 503)
    assert "did not start" in response.json()["detail"] and response.headers["retry-after"]
    assert count_rows(client.app)["models"] == 0  # type: ignore[arg-type]
    assert list(resources(client).artifacts.root.iterdir()) == []
    ready = client.get("/readyz")  # still ready (logits routes work), and it says why models do not
    assert ready.status_code == 200 and ready.json()["checks"]["model_workers"]["status"] == "unavailable"
    assert "did not start" in ready.json()["checks"]["model_workers"]["detail"]["error"]
    monkeypatch.undo()
    assert upload(client, onnx_models.mlp()[0]).status_code == 201  # the service recovers by itself
    assert client.get("/readyz").json()["checks"]["model_workers"]["status"] == "ok"


def test_the_python_client_uploads_predicts_and_evaluates(client: TestClient, tmp_path: Any) -> None:
    from caliper_client import CaliperClient, CaliperError

    data, _ = onnx_models.mlp(dtype=np.float32)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    caliper = CaliperClient(client, multipart_threshold=2_000)  # the 600-row inputs go as .npy parts
    model = caliper.upload_model(path, "mlp", embedding_output="embedding")
    x = np.random.default_rng(9).normal(size=(600, 6)).astype(np.float32)
    columns = caliper.predict(model["id"], {"x": x}, return_embedding=True)
    expected = plain_run(data, x)
    np.testing.assert_array_equal(columns["logits"], expected["logits"])
    np.testing.assert_array_equal(columns["embedding"], expected["embedding"])
    labels = np.argmax(expected["logits"], axis=1)
    evaluation = caliper.evaluate_model(model["id"], {"x": x}, labels=labels, metrics=["accuracy"])
    assert evaluation["metrics"] == {"accuracy": 1.0} and evaluation["model_id"] == model["id"]
    assert [m["id"] for m in caliper.list_models(name="mlp")["items"]] == [model["id"]]
    caliper.delete_model(model["id"])
    with pytest.raises(CaliperError) as missing:
        caliper.get_model(model["id"])
    assert missing.value.status == 404

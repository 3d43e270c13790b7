"""/v2, the Open Inference Protocol over pipelines: the real `tritonclient.http` against a live server
(health, metadata, binary and JSON inputs and outputs, a named subset, compression), plain V2 JSON with
httpx, every answer compared with a plain onnxruntime session on the pipeline's export; and every bad
input a 4xx `{"error"}`, never a 5xx."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from app.core.errors import InputError
from app.records import NotFoundError
from tests import onnx_models
from tests.test_api_models import upload
from tests.test_export import fit_heads, make_data, probe, session_outputs
from tests.test_pipelines import deploy

OURS = ["probabilities", "ood_score", "sdm_probabilities", "sdm_q", "sdm_d", "high_reliability"]


@pytest.fixture
def served(client: TestClient) -> dict[str, Any]:
    """A float32 MLP deployed twice as `mlp` (v1 bare, v2 with all three heads), and its v2 export."""
    data, x, _, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    deploy(client, "mlp", model["id"])
    latest = deploy(client, "mlp", model["id"], **heads)
    export = client.get(f"/v1/pipelines/{latest['id']}/onnx").content
    return {"export": export, "pipeline": latest, "bare": client.get("/v1/pipelines", params={"name": "mlp"})}


def test_tritonclient_health_metadata_and_infer(live_server: str, served: dict[str, Any]) -> None:
    url = live_server.removeprefix("http://")
    with triton.InferenceServerClient(url) as tc:
        assert tc.is_server_live() and tc.is_server_ready()
        assert tc.is_model_ready("mlp") and tc.is_model_ready("mlp", "1") and not tc.is_model_ready("nope")
        assert "binary_tensor_data" in tc.get_server_metadata()["extensions"]
        metadata = tc.get_model_metadata("mlp")
        assert metadata["versions"] == ["2", "1"]
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 6]}]
        datatypes = {o["name"]: o["datatype"] for o in metadata["outputs"]}
        assert datatypes == {
            "logits": "FP32",
            "embedding": "FP32",
            "probabilities": "FP32",
            "ood_score": "FP32",
            "sdm_probabilities": "FP32",
            "sdm_q": "INT64",
            "sdm_d": "FP32",
            "high_reliability": "BOOL",
        }
        x = probe(np.float32)
        want = session_outputs(served["export"], x)
        for binary_input in (True, False):
            given = triton.InferInput("x", list(x.shape), "FP32")
            given.set_data_from_numpy(x, binary_data=binary_input)
            result = tc.infer("mlp", [given])  # no outputs named: every output, binary
            for name in want:
                np.testing.assert_array_equal(result.as_numpy(name), want[name])
            asked = [triton.InferRequestedOutput("probabilities", binary_data=False)]
            asked.append(triton.InferRequestedOutput("high_reliability", binary_data=True))
            subset = tc.infer("mlp", [given], outputs=asked)
            assert [o["name"] for o in subset.get_response()["outputs"]] == ["probabilities", "high_reliability"]
            assert "data" in subset.get_output("probabilities") and "data" not in subset.get_output("high_reliability")
            np.testing.assert_array_equal(subset.as_numpy("probabilities"), want["probabilities"])
            np.testing.assert_array_equal(subset.as_numpy("high_reliability"), want["high_reliability"])
        for algorithm in ("gzip", "deflate"):
            compressed = tc.infer("mlp", [given], request_compression_algorithm=algorithm)
            np.testing.assert_array_equal(compressed.as_numpy("sdm_q"), want["sdm_q"])
        first = tc.infer("mlp", [given], model_version="1")
        assert set(first.get_response()["outputs"][i]["name"] for i in range(3)) == {
            "logits",
            "embedding",
            "probabilities",
        }
        with pytest.raises(InferenceServerException, match="no pipeline named 'nope'"):
            tc.infer("nope", [given])


def test_plain_v2_json_with_nested_or_flat_data(client: TestClient, served: dict[str, Any]) -> None:
    x = probe(np.float32)[:5]
    want = session_outputs(served["export"], x)
    for data in (x.tolist(), x.reshape(-1).tolist()):
        body = {"id": "r1", "inputs": [{"name": "x", "shape": [5, 6], "datatype": "FP32", "data": data}]}
        response = client.post("/v2/models/mlp/versions/2/infer", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["model_name"], answer["model_version"], answer["id"]) == ("mlp", "2", "r1")
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert list(outputs)[-6:] == OURS
        for name, value in want.items():
            assert outputs[name]["shape"] == list(value.shape)
            np.testing.assert_array_equal(
                np.asarray(outputs[name]["data"], dtype=value.dtype).reshape(value.shape), value
            )


def binary_request(x: np.ndarray, **extra: Any) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        **extra,
    }
    text = json.dumps(header).encode()
    return text + x.tobytes(), {"Inference-Header-Content-Length": str(len(text))}


def test_binary_answers_split_at_the_header_length(client: TestClient, served: dict[str, Any]) -> None:
    x = probe(np.float32)
    body, headers = binary_request(x, parameters={"binary_data_output": True})
    response = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    offset, want = length, session_outputs(served["export"], x)
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = want[output["name"]].dtype
        got = np.frombuffer(response.content[offset : offset + size], dtype=dtype).reshape(output["shape"])
        np.testing.assert_array_equal(got, want[output["name"]])
        offset += size
    assert offset == len(response.content)


def v2_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error"} and fragment in response.json()["error"], response.json()


def test_every_bad_request_is_a_4xx_error_object(client: TestClient, served: dict[str, Any]) -> None:
    x = probe(np.float32)[:4]
    body, headers = binary_request(x)
    header_length = int(headers["Inference-Header-Content-Length"])
    post = client.post
    v2_error(post("/v2/models/nope/infer", content=body, headers=headers), 404, "no pipeline named 'nope'")
    v2_error(post("/v2/models/mlp/versions/9/infer", content=body, headers=headers), 404, "version 9")
    v2_error(post("/v2/models/mlp/versions/one/infer", content=body, headers=headers), 400, "positive integer")
    for beyond in ("2147483648", "99999999999999999999999"):  # beyond the column: a 500 on Postgres before
        v2_error(post(f"/v2/models/mlp/versions/{beyond}/infer", content=body, headers=headers), 404, beyond)
    for digit in ("\u0661", "\u00b2"):  # an Arabic-Indic one, a superscript two: str.isdigit, not versions
        v2_error(post(f"/v2/models/mlp/versions/{digit}/infer", content=body, headers=headers), 400, "positive integer")
    v2_error(client.get("/v2/models/nope"), 404, "nope")
    v2_error(post("/v2/models/mlp/infer", content=body[:-3], headers=headers), 400, "past the end of the body")
    v2_error(post("/v2/models/mlp/infer", content=body + b"\0" * 4, headers=headers), 400, "no input claims")
    too_long = {"Inference-Header-Content-Length": str(len(body) + 1)}
    v2_error(post("/v2/models/mlp/infer", content=body, headers=too_long), 400, "outside the body")
    v2_error(
        post("/v2/models/mlp/infer", content=body, headers={"Inference-Header-Content-Length": "x"}), 400, "integer"
    )
    v2_error(
        post("/v2/models/mlp/infer", content=body[: header_length - 5], headers={}), 400, "invalid inference request"
    )
    v2_error(post("/v2/models/mlp/infer", content=b"\x00\xff not json"), 400, "invalid inference request")

    def json_case(inputs: list[dict[str, Any]], **extra: Any) -> httpx.Response:
        text = json.dumps({"inputs": inputs, **extra})  # NaN written as Python's json writes it
        return client.post("/v2/models/mlp/infer", content=text, headers={"Content-Type": "application/json"})

    good = {"name": "x", "shape": [4, 6], "datatype": "FP32", "data": x.reshape(-1).tolist()}
    v2_error(json_case([{**good, "datatype": "FP64"}]), 400, "is FP64; the pipeline's input is FP32")
    v2_error(json_case([{**good, "datatype": "INT64", "data": [1] * 24}]), 400, "is INT64")
    v2_error(json_case([{**good, "datatype": "FP16"}]), 400, "is FP16")
    v2_error(json_case([{**good, "datatype": "BYTES", "data": ["a"] * 24}]), 400, "BYTES tensors are not supported")
    v2_error(json_case([{**good, "datatype": "COMPLEX"}]), 400, "unknown datatype")
    v2_error(json_case([{**good, "shape": [4, 5]}]), 400, "needs 20")
    v2_error(json_case([{**good, "shape": [3, 8]}]), 400, "has shape [3, 8]")
    v2_error(json_case([{**good, "shape": [4, -6]}]), 400, "negative")
    v2_error(json_case([{**good, "data": ["a"] * 24}]), 400, "holds str values")
    v2_error(json_case([{**good, "data": [float("nan")] * 24}]), 400, "NaN")
    v2_error(json_case([{**good, "name": "y"}]), 400, "unknown input(s) ['y']")
    v2_error(json_case([]), 400, "no inputs")
    v2_error(json_case([good, good]), 400, "given twice")
    v2_error(json_case([{**good, "data": None}]), 400, "no `data`")
    v2_error(json_case([good], outputs=[{"name": "nope"}]), 400, "unknown output(s) ['nope']")
    v2_error(json_case([good], parameters={"binary_data_output": "yes"}), 400, "must be a boolean")
    sized = {**good, "parameters": {"binary_data_size": 3}}
    v2_error(json_case([sized]), 400, "not both")
    v2_error(
        post("/v2/models/mlp/infer", content=body, headers={**headers, "Content-Encoding": "br"}), 400, "not supported"
    )
    v2_error(
        post("/v2/models/mlp/infer", content=b"garbage", headers={"Content-Encoding": "gzip"}), 400, "not valid gzip"
    )
    v2_error(
        post(
            "/v2/models/mlp/infer", content=gzip.compress(body)[:-12], headers={**headers, "Content-Encoding": "gzip"}
        ),
        400,
        "truncated",
    )


def test_a_compressed_body_cannot_inflate_past_its_limit(
    client: TestClient, served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON body inflates to at most CALIPER_MAX_JSON_BYTES (issue 25: a 1 MB gzip body took +770 MB
    before its 400), one with binary data to at most CALIPER_MAX_BODY_BYTES."""
    settings = client.app.state.resources.settings  # type: ignore[attr-defined]
    monkeypatch.setattr(settings, "max_json_bytes", 1 << 20)
    monkeypatch.setattr(settings, "max_body_bytes", 4 << 20)
    bomb = zlib.compress(b"\0" * (2 << 20), 9)  # over the JSON limit, under the body limit
    response = client.post("/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "deflate"})
    v2_error(response, 400, f"exceeds its limit of {1 << 20} bytes")
    binary = {"Content-Encoding": "deflate", "Inference-Header-Content-Length": "2"}
    bigger = zlib.compress(b"\0" * (5 << 20), 9)
    v2_error(client.post("/v2/models/mlp/infer", content=bigger, headers=binary), 400, f"limit of {4 << 20} bytes")
    accepted = client.post("/v2/models/mlp/infer", content=bomb, headers=binary)  # within the body limit
    assert accepted.status_code == 400 and "exceeds" not in accepted.text  # inflated, then refused as V2 data


def test_a_pipeline_that_exceeds_its_memory_limit_answers_422_and_serving_goes_on(
    client: TestClient, served: dict[str, Any]
) -> None:
    greedy = upload(client, onnx_models.huge_allocation(), name="greedy").json()
    deploy(client, "greedy", greedy["id"])
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    v2_error(client.post("/v2/models/greedy/infer", json=body), 422, "")
    x = probe(np.float32)[:2]
    good = {"inputs": [{"name": "x", "shape": [2, 6], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    assert client.post("/v2/models/mlp/infer", json=good).status_code == 200


def test_a_deleted_or_new_version_is_seen_at_once(client: TestClient, served: dict[str, Any]) -> None:
    assert client.get("/v2/models/mlp").json()["versions"] == ["2", "1"]
    assert client.get("/v2/models/mlp/versions/2/ready").status_code == 200
    assert client.delete(f"/v1/pipelines/{served['pipeline']['id']}").status_code == 204
    v2_error(client.get("/v2/models/mlp/versions/2/ready"), 404, "version 2")
    assert client.get("/v2/models/mlp").json()["versions"] == ["1"]
    model_id = served["pipeline"]["model_id"]
    assert deploy(client, "mlp", model_id)["version"] == 3  # a deleted version's number is not given again
    assert client.get("/v2/models/mlp/ready").status_code == 200
    v2_error(client.get("/v2/models/mlp/versions/2"), 404, "version 2")


def test_unknown_v2_paths_answer_the_protocol_error(client: TestClient) -> None:
    v2_error(client.get("/v2/repository/index"), 404, "no V2 endpoint /v2/repository/index")
    v2_error(client.post("/v2/models/x/unload"), 404, "no V2 endpoint")


def test_idempotency_refusals_on_v2_are_the_protocols_error_objects(client: TestClient, served: dict[str, Any]) -> None:
    """An Idempotency-Key reused with another body answers 422, in V2's `{"error"}` on /v2."""
    x = probe(np.float32)
    first = {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": x[0].tolist()}]}
    second = {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": x[1].tolist()}]}
    keyed = {"Idempotency-Key": "v2-key"}
    assert client.post("/v2/models/mlp/infer", json=first, headers=keyed).status_code == 200
    v2_error(client.post("/v2/models/mlp/infer", json=second, headers=keyed), 422, "Idempotency-Key")
    v2_error(client.post("/v2/models/mlp/infer", json=first, headers={"Idempotency-Key": " "}), 400, "Idempotency-Key")


def test_the_data_plane_runs_without_the_wire(client: TestClient, served: dict[str, Any]) -> None:
    """`InferenceService.infer` takes and returns arrays by name, so a second transport (gRPC) calls the
    use case the REST edge calls, and gets the export's numbers; its faults are domain errors."""
    inference = client.app.state.resources.inference  # type: ignore[attr-defined]
    x = probe(np.float32)[:7]
    want = session_outputs(served["export"], x)
    answer = inference.infer("mlp", None, {"x": x}, ["probabilities", "sdm_q"])
    assert (answer.record.name, answer.record.version, list(answer.outputs)) == ("mlp", 2, ["probabilities", "sdm_q"])
    for name, value in answer.outputs.items():
        np.testing.assert_array_equal(value, want[name])
    assert set(inference.infer("mlp", 1, {"x": x}).outputs) == {"logits", "embedding", "probabilities"}
    with pytest.raises(InputError, match="is FP64; the pipeline's input is FP32"):
        inference.infer("mlp", None, {"x": x.astype(np.float64)})
    with pytest.raises(InputError, match=r"unknown output\(s\) \['nope'\]"):
        inference.infer("mlp", None, {"x": x}, ["nope"])
    with pytest.raises(NotFoundError, match="version 9"):
        inference.infer("mlp", 9, {"x": x})


def test_readiness_asks_the_worker_pool(client: TestClient, served: dict[str, Any]) -> None:
    """A version is ready when a model worker loads its export, not merely when the file exists."""
    resources = client.app.state.resources  # type: ignore[attr-defined]
    path = resources.inference.pipelines.artifacts.path(served["pipeline"]["sha256"])
    original = path.read_bytes()
    try:
        resources.workers.close()  # the idle workers go, with the sessions they cached
        path.write_bytes(b"not an onnx model")
        response = client.get("/v2/models/mlp/versions/2/ready")
        assert response.status_code == 400 and response.json()["ready"] is False
        assert "does not load" in response.json()["error"]
        path.unlink()
        assert "the export file is missing" in client.get("/v2/models/mlp/versions/2/ready").json()["error"]
    finally:
        path.write_bytes(original)
    assert client.get("/v2/models/mlp/versions/2/ready").json() == {"name": "mlp", "ready": True}

"""V2 over gRPC (the Open Inference Protocol's gRPC service): the real `tritonclient.grpc`, unchanged,
against the service (health, metadata, raw inputs and outputs, a named subset, versions), every answer
compared with a plain onnxruntime session on the pipeline's export; typed `contents` give what raw
bytes give; every bad input a status that says so (never UNKNOWN or INTERNAL); the API key in the
call's metadata and the key's project; the proto's messages field for field those of tritonclient's
copy of the protocol, and the committed generated code what the proto generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2 as theirs
from tritonclient.utils import InferenceServerException

from app.grpc_api import open_inference_pb2 as pb
from app.grpc_api.service import SERVICE, serve
from tests.test_api_models import upload
from tests.test_auth import as_key, auth_app, keys  # noqa: F401 (fixtures)
from tests.test_export import probe, session_outputs
from tests.test_pipelines import deploy
from tests.test_v2 import served  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
PROTO = "app/grpc_api/open_inference.proto"


@pytest.fixture
def port(app: FastAPI, client: TestClient) -> Iterator[int]:
    """The suite's app's resources served over gRPC on a free loopback port."""
    server = serve(app.state.resources)
    yield server.port
    server.stop(0)


def call(port: int, method: str, request: Any, response: Any, metadata: Any = ()) -> Any:
    """One call with this repository's own messages (the typed contents tritonclient never sends)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return rpc(request, metadata=metadata, timeout=60)


def test_tritonclient_grpc_health_metadata_and_infer(port: int, served: dict[str, Any]) -> None:  # noqa: F811
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as tc:
        assert tc.is_server_live() and tc.is_server_ready()
        assert tc.is_model_ready("mlp") and tc.is_model_ready("mlp", "1") and not tc.is_model_ready("nope")
        assert tc.get_server_metadata().name == "caliper"
        metadata = tc.get_model_metadata("mlp", as_json=True)
        assert metadata["versions"] == ["2", "1"] and metadata["platform"] == "onnxruntime_onnx"
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "6"]}]  # int64 as JSON text
        assert {o["name"]: o["datatype"] for o in metadata["outputs"]}["high_reliability"] == "BOOL"
        x = probe(np.float32)
        want = session_outputs(served["export"], x)
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        result = tc.infer("mlp", [given], request_id="r7")  # no outputs named: every output
        assert (result.get_response().model_name, result.get_response().model_version) == ("mlp", "2")
        assert result.get_response().id == "r7"
        for name, value in want.items():
            got = result.as_numpy(name)
            assert got.dtype == value.dtype and got.shape == value.shape, name
            np.testing.assert_array_equal(got, value)
        asked = [triton.InferRequestedOutput("high_reliability"), triton.InferRequestedOutput("probabilities")]
        subset = tc.infer("mlp", [given], outputs=asked)
        assert [o.name for o in subset.get_response().outputs] == ["high_reliability", "probabilities"]
        np.testing.assert_array_equal(subset.as_numpy("probabilities"), want["probabilities"])
        first = tc.infer("mlp", [given], model_version="1")
        assert {o.name for o in first.get_response().outputs} == {"logits", "embedding", "probabilities"}
        with pytest.raises(InferenceServerException, match="no pipeline named 'nope'") as unknown:
            tc.infer("nope", [given])
        assert unknown.value.status() == "StatusCode.NOT_FOUND"


def infer_request(x: np.ndarray, raw: bool = True, **fields: Any) -> Any:
    request = pb.ModelInferRequest(model_name="mlp", **fields)
    given = request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    if raw:
        request.raw_input_contents.append(x.tobytes())
    else:
        given.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return request


def test_typed_contents_answer_what_raw_bytes_answer(port: int, served: dict[str, Any]) -> None:  # noqa: F811
    x = probe(np.float32)[:9]
    raw = call(port, "ModelInfer", infer_request(x), pb.ModelInferResponse)
    typed = call(port, "ModelInfer", infer_request(x, raw=False), pb.ModelInferResponse)
    assert [o.name for o in raw.outputs] == [o.name for o in typed.outputs]
    assert list(raw.raw_output_contents) == list(typed.raw_output_contents)
    want = session_outputs(served["export"], x)
    for output, content in zip(typed.outputs, typed.raw_output_contents, strict=True):
        dtype = want[output.name].dtype
        np.testing.assert_array_equal(np.frombuffer(content, dtype).reshape(list(output.shape)), want[output.name])


def spoiled(change: str) -> Any:
    """An inference request of the probe's rows with one thing wrong."""
    x = probe(np.float32)[:3]
    if change == "nan":
        x = x.copy()
        x[1, 2] = np.nan
    request = infer_request(x, raw=change not in ("typed_short", "both", "wrong_field"))
    given = request.inputs[0]
    edits = {
        "shape": lambda: given.shape.__setitem__(1, 5),
        "short_raw": lambda: request.raw_input_contents.__setitem__(0, x.tobytes()[:-4]),
        "typed_short": lambda: given.contents.fp32_contents.pop(),
        "both": lambda: request.raw_input_contents.append(x.tobytes()),
        "wrong_field": lambda: given.contents.int_contents.extend([1] * 18),  # beside fp32_contents
        "datatype": lambda: setattr(given, "datatype", "FP64"),
        "unknown_datatype": lambda: setattr(given, "datatype", "FP8"),
        "bytes": lambda: setattr(given, "datatype", "BYTES"),
        "negative_shape": lambda: given.shape.__setitem__(0, -3),
        "extra_raw": lambda: request.raw_input_contents.append(b"\0" * 4),
        "unknown_input": lambda: setattr(given, "name", "z"),
        "twice": lambda: (request.inputs.add().CopyFrom(given), request.raw_input_contents.append(x.tobytes())),
        "no_inputs": lambda: (request.ClearField("inputs"), request.ClearField("raw_input_contents")),
        "unknown_output": lambda: request.outputs.add(name="nope"),
        "classification": lambda: request.outputs.add(name="logits").parameters["classification"].CopyFrom(
            pb.InferParameter(int64_param=2)
        ),
        "version": lambda: setattr(request, "model_version", "two"),
        "nan": lambda: None,
    }  # fmt: skip
    edits[change]()
    return request


@pytest.mark.parametrize(
    "change",
    ["shape", "short_raw", "typed_short", "both", "wrong_field", "datatype", "unknown_datatype", "bytes",
     "negative_shape", "extra_raw", "unknown_input", "twice", "no_inputs", "unknown_output", "classification",
     "version", "nan"],
)  # fmt: skip
def test_bad_inputs_are_invalid_arguments(port: int, served: dict[str, Any], change: str) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as refused:
        call(port, "ModelInfer", spoiled(change), pb.ModelInferResponse)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details(), change


def test_unknown_pipelines_and_versions_are_not_found(port: int, served: dict[str, Any]) -> None:  # noqa: F811
    x = probe(np.float32)[:2]
    for request in (infer_request(x, model_version="3"), pb.ModelInferRequest(model_name="nope")):
        with pytest.raises(grpc.RpcError) as refused:
            call(port, "ModelInfer", request, pb.ModelInferResponse)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        call(port, "ModelMetadata", pb.ModelMetadataRequest(name="mlp", version="9"), pb.ModelMetadataResponse)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_key_travels_in_the_metadata_and_keeps_its_project(
    auth_app: FastAPI,  # noqa: F811
    keys: dict[str, str],  # noqa: F811
) -> None:
    from tests.test_export import make_data

    with as_key(auth_app, keys["a_write"]) as writer:
        data, *_ = make_data(np.float32)
        deploy(writer, "mlp", upload(writer, data).json()["id"])
    server = serve(auth_app.state.resources)
    try:
        x = probe(np.float32)[:2]
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as tc:
            for token, status in ((None, "UNAUTHENTICATED"), ("not-a-key", "UNAUTHENTICATED"),
                                  (keys["revoked"], "UNAUTHENTICATED"), (keys["b_write"], "NOT_FOUND")):  # fmt: skip
                headers = {"authorization": f"Bearer {token}"} if token else None
                with pytest.raises(InferenceServerException) as refused:
                    tc.infer("mlp", [given], headers=headers)
                assert refused.value.status() == f"StatusCode.{status}", refused.value.message()
            with pytest.raises(InferenceServerException, match="API key"):
                tc.is_server_live()
            for headers in ({"authorization": f"Bearer {keys['a_read']}"}, {"x-api-key": keys["a_read"]}):
                assert tc.is_server_live(headers=headers)
                assert tc.infer("mlp", [given], headers=headers).as_numpy("logits").shape == (2, 3)
    finally:
        server.stop(0)


def test_the_service_starts_with_the_app_when_a_port_is_set(tmp_path: Path) -> None:
    from tests.conftest import files_app

    app = files_app(tmp_path, tmp_path, grpc_port=0)
    with TestClient(app), triton.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}") as tc:
        assert tc.is_server_live() and tc.is_server_ready()
    with pytest.raises(InferenceServerException):  # stopped with the app
        triton.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}").is_server_live(client_timeout=2)
    app.state.resources.close()


def fields(message: Any) -> list[tuple[str, int, int, bool, str | None]]:
    return [
        (f.name, f.number, f.type, f.is_repeated, f.message_type.name if f.message_type else None)
        for f in message.DESCRIPTOR.fields
    ]


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_message_is_the_protocols_field_for_field(name: str) -> None:
    ours, reference = getattr(pb, name), getattr(theirs, name)
    assert fields(ours) == [f for f in fields(reference) if f[0] in {g[0] for g in fields(ours)}]
    missing = {f[0] for f in fields(reference)} - {f[0] for f in fields(ours)}
    assert missing == set(), "a field of the protocol is missing"
    for nested in ours.DESCRIPTOR.nested_types:
        if not nested.GetOptions().map_entry:
            assert fields(getattr(ours, nested.name)) == fields(getattr(reference, nested.name)), nested.name


def test_the_committed_generated_code_is_what_the_proto_generates(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    shutil.copytree(ROOT / "app/grpc_api", tmp_path / "app/grpc_api", ignore=shutil.ignore_patterns("*_pb2*"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.", PROTO],
                   cwd=tmp_path, check=True)  # fmt: skip
    for suffix in ("_pb2.py", "_pb2.pyi"):
        generated = PROTO.replace(".proto", suffix)
        assert (tmp_path / generated).read_text() == (ROOT / generated).read_text(), f"run `make proto`: {generated}"


def test_calls_are_counted_by_method_and_code_and_an_unexpected_fault_is_internal(
    port: int,
    client: TestClient,
    served: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = probe(np.float32)[:2]
    call(port, "ModelInfer", infer_request(x), pb.ModelInferResponse)
    with pytest.raises(grpc.RpcError):
        call(port, "ModelInfer", spoiled("shape"), pb.ModelInferResponse)

    def broken(*args: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.resources.inference, "infer", broken)  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as failed:
        call(port, "ModelInfer", infer_request(x), pb.ModelInferResponse)
    assert failed.value.code() == grpc.StatusCode.INTERNAL and "secret" not in failed.value.details()
    exposed = client.get("/metrics").text
    for code in ("OK", "INVALID_ARGUMENT", "INTERNAL"):
        assert f'caliper_grpc_calls_total{{code="{code}",method="ModelInfer"}}' in exposed, code
    assert 'caliper_grpc_call_seconds_count{method="ModelInfer"}' in exposed

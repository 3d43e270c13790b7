"""The reproducers of issue 11, each sent as found: every one answers a 4xx problem naming the field (never
a 500) and stores nothing. Runs on SQLite and, in CI, on Postgres (where NUL bytes used to fail)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Y_A, Z_A, count_rows
from tests.test_api_bad_input import assert_problem

HUGE_SHAPES = [[4294967296, 4294967296], [2**70], [2**63, 2], [2**62, 4]]
EVALUATION = {"logits": Z_A.tolist(), "labels": Y_A.tolist()}


def _tensor(shape: list[int]) -> dict[str, Any]:
    return {"dtype": "float32", "shape": shape, "data_b64": ""}


def _json(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text, headers={"content-type": "application/json"})


def _stored(client: TestClient) -> int:
    return sum(count_rows(client.app).values())  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=str)
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/evaluations", {"labels": [0]}, "logits"),
        ("/v1/calibrators", {"method": "temperature", "labels": [0]}, "logits"),
        ("/v1/ood/scores", {}, "logits"),
        ("/v1/ood/evaluate", {"scores_out": [1.0]}, "scores_in"),
        ("/v1/detectors", {"method": "mahalanobis", "labels": [0]}, "features"),
    ],
)
def test_a_shape_that_overflows_int64_is_422(
    client: TestClient, path: str, body: dict[str, Any], field: str, shape: list[int]
) -> None:
    assert_problem(client.post(path, json={**body, field: _tensor(shape)}), 422, field)
    assert _stored(client) == 0


@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=str)
def test_an_npy_header_that_overflows_int64_is_422(client: TestClient, shape: list[int]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(1, np.float32))
    header = buffer.getvalue().replace(b"(1,)", str(tuple(shape)).encode().ljust(4))
    files = {"request": (None, json.dumps({"labels": [0]})), "logits": ("l.npy", header)}
    assert_problem(client.post("/v1/evaluations", files=files), 422, "logits")


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/v1/evaluations", '{"logits": ' + DEEP + ', "labels": [0]}'),
        ("/v1/evaluations", '{"logits": [[1, 0]], "labels": [0], "tags": ' + DEEP + "}"),
        ("/v1/ood/evaluate", '{"scores_in": ' + DEEP + "}"),
        ("/v1/gates", '{"candidate": ' + DEEP + "}"),
    ],
    ids=["logits", "tags", "ood", "gates"],
)
def test_json_nested_100000_deep_is_400(client: TestClient, path: str, text: str) -> None:
    assert_problem(_json(client, path, text), 400)


def test_a_deep_multipart_request_part_is_400(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, Z_A)
    files = {"request": (None, '{"labels": ' + DEEP + "}"), "logits": ("l.npy", buffer.getvalue())}
    assert_problem(client.post("/v1/evaluations", files=files), 400)


def test_the_default_metrics_with_soft_targets_and_six_classes_are_computed(client: TestClient) -> None:
    """The default set has top_k_accuracy when C ≥ 6; with soft targets its label is their argmax."""
    response = client.post("/v1/evaluations", json={"logits": [[1, 0, 0, 0, 0, 0]], "targets": [[1, 0, 0, 0, 0, 0]]})
    assert response.status_code == 201, response.text
    assert response.json()["metrics"]["top_k_accuracy"] == 1.0
    soft = client.post(
        "/v1/evaluations",
        json={
            "logits": [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]],
            "targets": [[0.6, 0.4, 0, 0, 0, 0], [0.9, 0, 0, 0, 0, 0.1]],  # argmax 0: ranked 6th, then 1st
            "metrics": [{"name": "top_k_accuracy", "k": 5}, {"name": "top_k_accuracy", "k": 6, "key": "top6"}],
        },
    ).json()
    assert soft["metrics"]["top_k_accuracy"] == 0.5 and soft["metrics"]["top6"] == 1.0


@pytest.mark.parametrize("method", ["mahalanobis", "relative_mahalanobis"])
def test_features_near_the_float64_limit_are_422(client: TestClient, method: str) -> None:
    features = [[1e308, 1e308], [-1e308, 1e307], [1e308, -1e308], [-1e308, -1e308]]
    response = client.post("/v1/detectors", json={"method": method, "features": features, "labels": [0, 1, 0, 1]})
    assert_problem(response, 422, "features")
    assert _stored(client) == 0


@pytest.mark.parametrize(
    "body",
    [
        {**EVALUATION, "model": "m\x00"},
        {**EVALUATION, "dataset": "\x00"},
        {**EVALUATION, "tags": {"k\x00": "v"}},
        {**EVALUATION, "tags": {"k": "v\x00"}},
    ],
    ids=["model", "dataset", "tag-key", "tag-value"],
)
def test_a_nul_byte_in_a_text_field_is_400(client: TestClient, body: dict[str, Any]) -> None:
    assert_problem(client.post("/v1/evaluations", json=body), 400)
    assert _stored(client) == 0


@pytest.mark.parametrize(
    ("method", "url", "params"),
    [
        ("get", "/v1/evaluations/abc%00def", {}),
        ("get", "/v1/evaluations", {"model": "a\x00b"}),
        ("get", "/v1/evaluations", {"cursor": "\x00"}),
        ("get", "/v1/gates", {"candidate": "\x00"}),
        ("delete", "/v1/detectors/%00", {}),
    ],
)
def test_a_nul_byte_in_an_id_filter_or_cursor_is_400(
    client: TestClient, method: str, url: str, params: dict[str, str]
) -> None:
    assert_problem(getattr(client, method)(url, params=params), 400)


def test_nul_in_a_tags_body_is_400(client: TestClient) -> None:
    created = client.post("/v1/evaluations", json=EVALUATION).json()
    assert_problem(client.post(f"/v1/evaluations/{created['id']}/tags", json={"tags": {"a\x00": "b"}}), 400)
    assert client.get(f"/v1/evaluations/{created['id']}").json()["tags"] == {}


def test_a_gate_with_significance_between_one_row_evaluations_has_a_defined_interval(client: TestClient) -> None:
    """Poisson weights leave a one-row resample empty with probability 1/e; those replicates are undefined
    (0/0) and dropped, so the interval is the one possible difference, 1 − 0."""
    baseline = client.post("/v1/evaluations", json={"logits": [[0.0, 2.0]], "labels": [0]}).json()["id"]
    candidate = client.post("/v1/evaluations", json={"logits": [[2.0, 0.0]], "labels": [0]}).json()["id"]
    rules = [{"metric": "accuracy", "op": "min_improvement_abs", "value": 0.5}]
    body = {"candidate": candidate, "baseline": baseline, "rules": rules, "significance": 0.95}
    gate = client.post("/v1/gates", json=body)
    assert gate.status_code == 201, gate.text
    rule = gate.json()["rules"][0]
    assert rule["interval"] == [1.0, 1.0] and rule["passed"] and gate.json()["verdict"] == "pass"


@pytest.mark.parametrize(
    "text",
    [
        '{"logits": [[1, 0]], "labels": [0], "labels": [1]}',
        '{"logits": [[1, 0]], "labels": [0], "tags": {"a": "1", "a": "2"}}',
    ],
    ids=["top-level", "nested"],
)
def test_duplicate_json_keys_are_400(client: TestClient, text: str) -> None:
    assert_problem(_json(client, "/v1/evaluations", text), 400)
    assert _stored(client) == 0


def test_duplicate_keys_in_a_fastapi_parsed_body_are_400(client: TestClient) -> None:
    assert_problem(
        _json(client, "/v1/gates", '{"candidate": "a", "candidate": "b", "baseline": "c", "rules": []}'), 400
    )


def test_a_second_request_part_is_422(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, Z_A)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n{"labels": [0, 2, 0, 1]}\r\n'
        b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n{"labels": [1, 1, 1, 1]}\r\n'
        b'--b\r\nContent-Disposition: form-data; name="logits"; filename="l.npy"\r\n\r\n'
        + buffer.getvalue()
        + b"\r\n--b--\r\n"
    )
    response = client.post("/v1/evaluations", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_problem(response, 422, "request")


def test_tags_are_capped_and_errors_do_not_echo_megabytes(client: TestClient) -> None:
    many = {f"k{i}": "v" for i in range(65)}
    assert_problem(client.post("/v1/evaluations", json={**EVALUATION, "tags": many}), 422, "tags")
    assert client.post("/v1/evaluations", json={**EVALUATION, "tags": dict(list(many.items())[:64])}).status_code == 201
    response = client.post("/v1/evaluations", json={**EVALUATION, "tags": {"k" * 1_000_000: "v"}})
    assert_problem(response, 422, "tags")
    assert len(response.content) < 10_000


def _chunks(total: int, size: int = 1 << 20) -> Any:
    yield b'{"tags": {"a": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}}'


@pytest.mark.parametrize("path", ["/v1/gates", "/v1/evaluations/x/tags", "/v1/evaluations"])
def test_a_chunked_body_over_the_limit_is_413(client: TestClient, path: str) -> None:
    limit = client.app.state.resources.settings.max_body_bytes  # type: ignore[attr-defined]
    response = client.post(path, content=_chunks(limit + (2 << 20)), headers={"content-type": "application/json"})
    assert_problem(response, 413)


def test_json_over_its_own_limit_is_413_and_points_to_binary_tensors(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = client.app.state.resources  # type: ignore[attr-defined]
    monkeypatch.setattr(resources, "settings", resources.settings.model_copy(update={"max_json_bytes": 2_000}))
    big = {"logits": np.zeros((200, 3)).tolist(), "labels": [0] * 200}
    response = client.post("/v1/evaluations", json=big)
    assert_problem(response, 413)
    assert "data_b64" in response.json()["detail"] and "multipart" in response.json()["detail"]
    assert client.post("/v1/evaluations", json=EVALUATION).status_code == 201  # small bodies still pass


def test_a_500_keeps_the_keep_alive_connection(live_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error answers a 500 problem and the same connection serves the next request."""
    import http.client
    from urllib.parse import urlsplit

    from app.storage import evaluations as evaluation_store

    def explode(array: np.ndarray) -> bytes:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(evaluation_store, "encode_array", explode)
    address = urlsplit(live_server)
    connection = http.client.HTTPConnection(address.hostname or "", address.port)
    connection.request("POST", "/v1/evaluations", json.dumps(EVALUATION), {"content-type": "application/json"})
    failed = connection.getresponse()
    assert failed.status == 500 and json.loads(failed.read())["status"] == 500
    socket_before = connection.sock
    connection.request("GET", "/healthz")
    assert connection.getresponse().status == 200 and connection.sock is socket_before


def test_columns_that_can_overflow_are_nullable_in_the_schema(client: TestClient) -> None:
    """Per-row outputs computed from finite inputs can still overflow their dtype; JSON has no inf/NaN, so
    they answer null, and the OpenAPI document must allow it (a client's validator would reject it)."""
    components = client.get("/openapi.json").json()["components"]["schemas"]
    for model, name in [
        ("DetectorScoresOut", "scores"),
        ("ScoresOut", "scores"),
        ("ApplyOut", "probabilities"),
        ("SdmScoresOut", "d_nearest"),
        ("RuleResult", "interval"),
    ]:
        assert '"null"' in json.dumps(components[model]["properties"][name]), model


def test_base64_tensors_decode_slice_by_slice(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from caliper_client.wire import encode_tensor_object

    from app import tensors

    monkeypatch.setattr(tensors, "B64_SLICE", 8)  # many slices for a small tensor
    logits = np.random.default_rng(1).normal(size=(37, 3))
    body = {"logits": encode_tensor_object(logits), "labels": [0, 1, 2] * 12 + [0], "per_sample": True}
    sliced = client.post("/v1/evaluations", json={**body, "store": False}).json()
    plain = client.post(
        "/v1/evaluations", json={"logits": logits.tolist(), "labels": body["labels"], "per_sample": True}
    )
    assert sliced["per_sample"] == plain.json()["per_sample"] and sliced["metrics"] == plain.json()["metrics"]
    broken = dict(body["logits"], data_b64="A!" + body["logits"]["data_b64"][2:])  # right length, bad character
    assert_problem(client.post("/v1/evaluations", json={**body, "logits": broken}), 422, "logits")
    unpadded = dict(body["logits"], data_b64=body["logits"]["data_b64"][:-1])
    assert_problem(client.post("/v1/evaluations", json={**body, "logits": unpadded}), 422, "logits")
    assert _stored(client) > 0  # only the plain, stored one


def test_a_body_shorter_than_its_content_length_is_400() -> None:
    from app.api.bodies import read_body
    from app.api.problems import ProblemError

    class Short:
        def __init__(self) -> None:
            self.headers = {"content-length": "10"}

        async def stream(self) -> Any:
            yield b"{}"

    import asyncio

    with pytest.raises(ProblemError, match="ended after 2 of its Content-Length of 10"):
        asyncio.run(read_body(Short()))  # type: ignore[arg-type]


def test_a_large_json_body_is_parsed_and_converted_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing and list → array conversion of a body above 256 KiB run in a worker thread (no running event
    loop there), so /healthz keeps answering while a large upload is decoded."""
    import asyncio

    from app.api import bodies

    seen: list[bool] = []
    original = bodies._pop_tensors

    def recording(*args: Any) -> dict[str, np.ndarray]:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return original(*args)

    monkeypatch.setattr(bodies, "_pop_tensors", recording)
    small = client.post("/v1/evaluations", json=EVALUATION)
    rows = np.random.default_rng(2).normal(size=(20_000, 3))
    large = client.post("/v1/evaluations", json={"logits": rows.tolist(), "labels": [0] * 20_000})
    assert small.status_code == large.status_code == 201
    assert seen == [True, False]  # the small body on the loop, the large one off it

"""Every bad input gets a problem+json 4xx naming the field, and nothing is stored."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import LOCAL, Y_A, Z_A, count_rows

GOOD: dict[str, Any] = {"logits": Z_A.tolist(), "labels": Y_A.tolist()}


def with_(**changes: Any) -> dict[str, Any]:
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


JSON_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("labels_out_of_range", with_(labels=[0, 2, 0, 3]), "labels"),
    ("negative_label", with_(labels=[0, -1, 0, 1]), "labels"),
    ("fractional_labels", with_(labels=[0, 1.5, 0, 1]), "labels"),
    ("label_count_mismatch", with_(labels=[0, 1]), "labels"),
    ("ragged_logits", with_(logits=[[1.0, 2.0], [1.0]]), "logits"),
    ("non_numeric_logits", with_(logits=[["a", "b"], ["c", "d"]]), "logits"),
    ("empty_logits", with_(logits=[], labels=[]), "logits"),
    ("one_class", with_(logits=[[1.0], [2.0]], labels=[0, 0]), "logits"),
    ("three_dimensional_logits", with_(logits=[[[1.0, 2.0]], [[3.0, 0.0]]], labels=[0, 1]), "logits"),
    ("binary_logits_and_too_few_labels", with_(logits=[1.0, 2.0, 3.0], labels=[0]), "labels"),  # [N]: binary
    ("logits_and_probabilities", with_(probabilities=[[0.5, 0.5]] * 4), "logits"),
    ("no_labels", with_(labels=...), "labels"),
    (
        "probabilities_not_summing_to_one",
        {"probabilities": [[0.5, 0.6], [0.3, 0.7]], "labels": [0, 1]},
        "probabilities",
    ),
    ("negative_probabilities", {"probabilities": [[-0.5, 1.5], [0.3, 0.7]], "labels": [0, 1]}, "probabilities"),
    ("targets_not_summing_to_one", {"logits": [[1.0, 2.0]], "targets": [[0.2, 0.2]]}, "targets"),
    ("unknown_loss", with_(losses=["cross_entropy", "not_a_loss"]), "losses"),
    ("unknown_metric", with_(metrics=["ece", "nope"]), "metrics"),
    ("unknown_parameter", with_(losses=[{"name": "focal", "gama": 2}]), "losses"),
    ("zero_bins", with_(metrics=[{"name": "ece", "bins": 0}]), "metrics"),
    ("negative_gamma", with_(losses=[{"name": "focal", "gamma": -1}]), "losses"),
    ("z_loss_without_a", with_(losses=[{"name": "z_loss", "b": 1.0}]), "losses"),
    ("odd_taylor_order", with_(losses=[{"name": "taylor_softmax_ce", "order": 3}]), "losses"),
    ("class_weights_wrong_length", with_(losses=[{"name": "cross_entropy", "weight": [1, 2]}]), "losses"),
    ("kd_without_teacher", with_(losses=["kd"]), "teacher_logits"),
    ("label_loss_with_soft_targets", {"logits": [[1.0, 2.0]], "targets": [[0.5, 0.5]], "losses": ["gce"]}, "losses"),
    ("duplicate_keys", with_(losses=["nll", {"name": "nll"}]), "losses"),
    ("bad_key", with_(losses=[{"name": "nll", "key": "has space"}]), "losses"),
    ("unknown_field", with_(logit=[[1.0]]), "logit"),
    ("teacher_shape", with_(teacher_logits=[[1.0, 2.0]], losses=["kd"]), "teacher_logits"),
    ("negative_sample_weight", with_(sample_weight=[1, -1, 1, 1]), "sample_weight"),
    ("tensor_object_bad_dtype", with_(logits={"dtype": "float16", "shape": [4, 3], "data_b64": ""}), "logits"),
    ("tensor_object_bad_base64", with_(logits={"dtype": "float64", "shape": [4, 3], "data_b64": "!!!"}), "logits"),
    (
        "tensor_object_short_data",
        with_(logits={"dtype": "float64", "shape": [4, 3], "data_b64": base64.b64encode(b"\0" * 8).decode()}),
        "logits",
    ),
    ("tensor_object_negative_shape", with_(logits={"dtype": "float64", "shape": [-4, 3], "data_b64": ""}), "logits"),
    ("store_not_boolean", with_(store="maybe"), "store"),
]


def assert_problem(response: Any, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and "type" in body
    if field is not None:
        assert any(e["field"].startswith(field) for e in body["errors"]), body
        assert field in body["detail"] or any(field in e["field"] for e in body["errors"])


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_bad_json_input_is_422_and_stores_nothing(client: TestClient, body: dict[str, Any], field: str) -> None:
    assert_problem(client.post("/v1/evaluations", json=body), 422, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_logits_are_rejected(client: TestClient, token: str) -> None:
    raw = f'{{"logits": [[1.0, {token}], [0.0, 1.0]], "labels": [0, 1]}}'
    response = client.post("/v1/evaluations", content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 422, "logits")
    assert "NaN or infinite" in response.json()["detail"]
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


MULTIPART_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("pickled_object_array", {"logits": _npy(np.array([{"x": 1}], dtype=object), allow_pickle=True)}, "logits"),
    ("not_npy", {"logits": b"definitely not numpy"}, "logits"),
    ("complex_dtype", {"logits": _npy(np.ones((4, 3), dtype=np.complex64))}, "logits"),
    ("float16", {"logits": _npy(np.ones((4, 3), dtype=np.float16))}, "logits"),
    ("nan_npy", {"logits": _npy(np.full((4, 3), np.nan))}, "logits"),
    ("unknown_part", {"weights_file": _npy(np.ones(4))}, "weights_file"),
]


@pytest.mark.parametrize(("parts", "field"), [c[1:] for c in MULTIPART_CASES], ids=[c[0] for c in MULTIPART_CASES])
def test_bad_multipart_input_is_422(client: TestClient, parts: dict[str, bytes], field: str) -> None:
    files = {
        "request": (None, "{}", "application/json"),
        "logits": ("l.npy", _npy(Z_A)),
        "labels": ("y.npy", _npy(Y_A)),
    }
    files.update({k: (f"{k}.npy", v) for k, v in parts.items()})  # type: ignore[misc]
    assert_problem(client.post("/v1/evaluations", files=files), 422, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/evaluations", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 400)
    assert_problem(client.post("/v1/evaluations", json=[1, 2]), 400)


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/evaluations", content=b"logits=1", headers={"content-type": "text/plain"})
    assert_problem(response, 415)


def test_oversized_body_is_413_before_parsing(client: TestClient) -> None:
    limit = client.app.state.resources.settings.max_body_bytes  # type: ignore[attr-defined]
    response = client.post(
        "/v1/evaluations", content=b"{" + b" " * limit + b"}", headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)

    def chunks():  # no Content-Length: the streamed size is counted
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    response = client.post("/v1/evaluations", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_a_json_body_declared_over_the_json_limit_is_413_before_it_is_read(tmp_path: Any) -> None:
    """Issue 25: such bodies were buffered whole although Content-Length said they were too large."""
    from app.api.main import create_app
    from app.config import Settings

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'json.db'}", artifact_dir=tmp_path, max_json_bytes=1 << 20,
        max_body_bytes=8 << 20, rate_limit="",
    )  # fmt: skip
    size = (1 << 20) + 1  # allowed as a body, not as JSON
    pulled: list[int] = []

    def body():  # counts what the server pulls of a body it should refuse unread
        for _ in range(size // 65536 + 1):
            pulled.append(65536)
            yield b" " * 65536

    headers = {"content-type": "application/json", "content-length": str(size)}
    with TestClient(create_app(settings), raise_server_exceptions=False, base_url=LOCAL) as client:
        response = client.post("/v1/evaluations", content=body(), headers=headers)
        assert_problem(response, 413)
        assert "CALIPER_MAX_JSON_BYTES" in response.json()["detail"] and sum(pulled) < size
        client.app.state.resources.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tag": ":no-key"}, "tag"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
    ],
)
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, Any], field: str) -> None:
    assert_problem(client.get("/v1/evaluations", params=params), 422, field)


def test_unknown_ids_and_routes_are_404_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/evaluations/nope"), 404)
    assert_problem(client.get("/v1/nothing-here"), 404)
    assert_problem(client.put("/v1/evaluations"), 405)


def test_problem_body_is_valid_json_for_every_case(client: TestClient) -> None:
    response = client.post("/v1/evaluations", json=with_(labels=[9, 9, 9, 9]))
    body = json.loads(response.content)
    assert body["errors"] == [{"field": "labels", "message": "label 9 is outside [0, 3) for C = 3 classes"}]


def _raw_multipart(client: TestClient, body: bytes, content_type: str) -> Any:
    return client.post("/v1/evaluations", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n{}\r\n--b--', "multipart/form-data"),
        (b'--b\r\nContent-Disposition: form-data; name="request"\r\n\r\n{}', "multipart/form-data; boundary=b"),
        (b"--b\r\nContent-Disposition: form-data\r\n\r\n{}\r\n--b--", "multipart/form-data; boundary=b"),
        (b"--b\r\nno-colon-header\r\n\r\n{}\r\n--b--", "multipart/form-data; boundary=b"),
        (b"no boundary anywhere", "multipart/form-data; boundary=b"),
        (
            b"--b\r\n" + b'Content-Disposition: form-data; name="x"\r\n\r\n1\r\n--b\r\n' * 70 + b"--",
            "multipart/form-data; boundary=b",
        ),
    ],
    ids=[
        "no_boundary_param",
        "truncated",
        "part_without_name",
        "malformed_header",
        "boundary_missing",
        "too_many_parts",
    ],
)
def test_malformed_multipart_is_400(client: TestClient, body: bytes, content_type: str) -> None:
    assert_problem(_raw_multipart(client, body, content_type), 400)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_curl_style_multipart_with_duplicate_part_is_422(client: TestClient) -> None:
    logits = _npy(Z_A)
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="logits"; filename="l.npy"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + logits + b"\r\n"
    )
    body = (
        part
        + part
        + b'--XyZ\r\nContent-Disposition: form-data; name="labels"; filename="y.npy"\r\n\r\n'
        + _npy(Y_A)
        + b"\r\n--XyZ--\r\n"
    )
    assert_problem(_raw_multipart(client, body, "multipart/form-data; boundary=XyZ"), 422, "logits")
    good = (
        part
        + b'--XyZ\r\nContent-Disposition: form-data; name="labels"; filename="y.npy"\r\n\r\n'
        + _npy(Y_A)
        + b"\r\n--XyZ--\r\n"
    )
    response = _raw_multipart(client, good, "multipart/form-data; boundary=XyZ")
    assert response.status_code == 201, response.text
    np.testing.assert_allclose(response.json()["losses"]["cross_entropy"], 0.9389701905189698, rtol=1e-12)


def _part(name: str, data: bytes) -> bytes:
    return b'--XyZ\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + data + b"\r\n"


@pytest.mark.parametrize(
    ("parts", "field", "message"),
    [
        ([("logits", _npy(Z_A)), ("logits", _npy(Z_A))], "logits", "given twice"),
        ([("request", b'{"logits": [[0.0, 1.0, 2.0]]}'), ("logits", _npy(Z_A))], "logits", "inside 'request'"),
        ([("request", b"{}"), ("request", b"{}"), ("logits", _npy(Z_A))], "request", "given twice"),
        ([("weights_file", _npy(Y_A))], "weights_file", "unknown multipart part"),
    ],
    ids=["part_twice", "part_and_inline", "request_twice", "unknown_part"],
)
def test_each_tensor_is_given_once(
    client: TestClient, parts: list[tuple[str, bytes]], field: str, message: str
) -> None:
    body = b"".join(_part(name, data) for name, data in [*parts, ("labels", _npy(Y_A))]) + b"--XyZ--\r\n"
    response = _raw_multipart(client, body, "multipart/form-data; boundary=XyZ")
    assert_problem(response, 422, field)
    assert message in response.json()["detail"]
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_fortran_order_and_big_endian_npy_are_read_correctly(client: TestClient) -> None:
    files = {
        "request": (None, "{}", "application/json"),
        "logits": ("l.npy", _npy(np.asfortranarray(Z_A).astype(">f8"))),
        "labels": ("y.npy", _npy(Y_A)),
    }
    response = client.post("/v1/evaluations", files=files)
    assert response.status_code == 201, response.text
    np.testing.assert_allclose(response.json()["losses"]["cross_entropy"], 0.9389701905189698, rtol=1e-12)


LISTS = ["/v1/evaluations", "/v1/calibrators", "/v1/detectors", "/v1/sdm", "/v1/gates", "/v1/models", "/v1/pipelines"]
FORGED_CURSORS = [
    "not-a-cursor",
    "AAAA",
    "MjAyNnxhYmM",
    base64.urlsafe_b64encode(b"2026-01-01T00:00:00|a\x00b").decode(),  # a NUL in the id: a 500 on Postgres
    base64.urlsafe_b64encode(b"2026-01-01T00:00:00\x00|ab").decode(),
    "MjAyNi0wMS0wMVQwMDowMDowMHxhYg==" + "!!",  # an issued shape with characters base64 would skip
]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("cursor", FORGED_CURSORS)
def test_a_cursor_this_service_did_not_issue_is_422(client: TestClient, path: str, cursor: str) -> None:
    assert_problem(client.get(path, params={"cursor": cursor}), 422, "cursor")
    page = client.get(path, params={"limit": 1})
    assert page.status_code == 200 and page.json() == {"items": [], "next_cursor": None}


def test_cors_is_off_by_default_and_allows_only_the_configured_origins(settings: Any) -> None:
    from app.api.main import create_app

    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings), base_url=LOCAL) as default:
        response = default.options("/v1/evaluations", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    allowed = settings.model_copy(update={"cors_origins": "https://app.example.com, https://other.example.com"})
    with TestClient(create_app(allowed), base_url=LOCAL) as configured:
        response = configured.options("/v1/evaluations", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        foreign = configured.options("/v1/evaluations", headers={**preflight, "Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in foreign.headers

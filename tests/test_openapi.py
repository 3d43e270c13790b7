"""The OpenAPI document: valid OpenAPI 3.1 (openapi-spec-validator), short unique operation ids, one
reusable Tensor schema, the Problem schema on every /v1 error response (the V2 error object on /v2), only
the statuses a route declares, binary media types where the answer is a file, multipart described with
its encoding."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import OpenAPIV31SpecValidator


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    errors = [str(e).splitlines()[0] for e in OpenAPIV31SpecValidator(spec).iter_errors()]
    assert errors == []


def test_operation_ids_are_short_unique_and_camel_case(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]{2,30}", i) for i in ids), ids
    assert {"createEvaluation", "listEvaluations", "getEvaluation", "modelInfer", "exportModel"} <= set(ids)


def test_tensors_are_one_schema_referenced_everywhere(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert [s.get("$ref", s.get("type")) for s in schemas["Tensor"]["oneOf"]] == [
        "array",
        "#/components/schemas/TensorObject",
    ]
    logits = schemas["EvaluationRequest"]["properties"]["logits"]
    assert logits["anyOf"] == [{"$ref": "#/components/schemas/Tensor"}, {"type": "null"}]
    assert "TensorObject" not in str({k: v for k, v in schemas.items() if k not in ("Tensor", "TensorObject")})


def test_every_error_response_has_its_schema(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            (media, content), *rest = response["content"].items()
            assert not rest, (method, path, status)
            if path.startswith("/v2"):
                assert (media, content["schema"]["$ref"]) == ("application/json", "#/components/schemas/V2ErrorBody")
            else:
                assert media == "application/problem+json", (method, path, status)
                assert content["schema"]["$ref"] == "#/components/schemas/Problem"


def test_only_the_statuses_a_route_can_answer(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        statuses = set(op["responses"])
        if method == "get":
            assert not statuses & {"413", "415"}, (method, path)
        if method == "delete":
            assert "422" not in statuses and "404" in statuses, (method, path)
    assert "409" in spec["paths"]["/v1/models/{model_id}"]["delete"]["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_files_have_binary_media_types(spec: dict[str, Any]) -> None:
    for path in ("/v1/models/{model_id}/onnx", "/v1/models/{model_id}/export", "/v1/pipelines/{pipeline_id}/onnx"):
        assert list(spec["paths"][path]["get"]["responses"]["200"]["content"]) == ["application/octet-stream"]
    predict = spec["paths"]["/v1/models/{model_id}/predict"]["post"]["responses"]["200"]["content"]
    assert set(predict) == {"application/json", "application/x-npz"}


def test_multipart_bodies_name_their_parts_and_encodings(spec: dict[str, Any]) -> None:
    for method, path, op in operations(spec):
        multipart = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if multipart is None:
            continue
        properties = multipart["schema"]["properties"]
        assert not any("*" in name for name in properties), (method, path)
        assert multipart["encoding"]["request"]["contentType"] == "application/json", (method, path)
    detector = spec["paths"]["/v1/detectors"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "features.<name>" in detector["schema"]["additionalProperties"]["description"]

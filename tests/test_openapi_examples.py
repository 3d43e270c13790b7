"""Every operation with a request body documents an example (Swagger's "Example Value"), and every such
example works: posted to the app, with the example id replaced by a real one of the right kind, it
answers 2xx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.examples import EXAMPLE_ID

ROOT = Path(__file__).resolve().parents[1]


def request_example(spec: dict[str, Any], operation: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(media type, example body) of an operation's request; for multipart, the `request` part's."""
    content = operation.get("requestBody", {}).get("content", {})
    for media, body in content.items():
        schema = body["schema"]
        if media == "multipart/form-data" and "application/json" not in content:
            schema = schema["properties"]["request"] if "request" in schema.get("properties", {}) else schema
        if "$ref" in schema:
            found = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]].get("examples")
            return media, found[0] if found else {}
    return None


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def test_every_operation_with_a_body_has_an_example(spec: dict[str, Any]) -> None:
    missing = [
        operation["operationId"]
        for operations in spec["paths"].values()
        for operation in operations.values()
        if "requestBody" in operation and not (request_example(spec, operation) or ("", {}))[1]
    ]
    assert missing == []


def _posted(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post(path, json=body)
    assert answer.status_code in (200, 201), answer.text
    created: dict[str, Any] = answer.json()
    return created


def test_every_request_example_works(client: TestClient, spec: dict[str, Any]) -> None:
    examples = {
        operation["operationId"]: request_example(spec, operation)
        for operations in spec["paths"].values()
        for operation in operations.values()
        if "requestBody" in operation
    }

    def example(operation_id: str) -> dict[str, Any]:
        found = examples[operation_id]
        assert found is not None
        return found[1]

    # The resources the examples name, made from the examples themselves where they can be.
    with (ROOT / "models" / "digits_mlp.onnx").open("rb") as onnx_file:
        uploaded = client.post(
            "/v1/models", files={"file": onnx_file}, data={"request": json.dumps(example("uploadModel"))}
        )
    assert uploaded.status_code == 201, uploaded.text
    model = uploaded.json()["id"]
    evaluation = _posted(client, "/v1/evaluations", example("createEvaluation"))["id"]
    calibrator = _posted(client, "/v1/calibrators", example("createCalibrator"))["id"]
    detector = _posted(client, "/v1/detectors", example("createDetector"))["id"]
    sdm = _posted(client, "/v1/sdm", example("createSdm"))["id"]
    validation = np.load(ROOT / "models" / "digits_val.npz")
    from_model = {"model_id": model, "inputs": {"x": validation["x"].tolist()}, "labels": validation["labels"].tolist()}
    model_calibrator = _posted(client, "/v1/calibrators", {"method": "temperature", **from_model})["id"]
    baseline = {**example("createEvaluation"), "model": "resnet50", "tags": {"prod": "true"}}
    _posted(client, "/v1/evaluations", baseline)
    ids = {"candidate": evaluation, "model_id": model, "calibrator_id": model_calibrator}

    def with_ids(body: dict[str, Any]) -> dict[str, Any]:
        return {k: ids.get(k, v) if v == EXAMPLE_ID else v for k, v in body.items()}

    pipeline = _posted(client, "/v1/pipelines", with_ids(example("createPipeline")))

    paths = {
        "{evaluation_id}": evaluation, "{calibrator_id}": calibrator, "{detector_id}": detector, "{sdm_id}": sdm,
        "{model_id}": model, "{name}": pipeline["name"], "{version}": str(pipeline["version"]),
    }  # fmt: skip
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            media, body = examples[operation["operationId"]] or ("", {})
            body = with_ids(body)
            assert EXAMPLE_ID not in json.dumps(body), operation["operationId"]
            url = path
            for name, value in paths.items():
                url = url.replace(name, value)
            if operation["operationId"] == "uploadModel":
                continue  # posted above, with the demo model's file
            answer = client.request(method.upper(), url, json=body)
            assert answer.status_code in (200, 201), f"{operation['operationId']} ({media}): {answer.text}"

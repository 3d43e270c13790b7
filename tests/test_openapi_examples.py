"""Every operation with a request body documents an example (Swagger's "Example Value"), and every such
example works: posted to the app, with the example id replaced by a real one of the right kind, it
answers 2xx. Every JSON answer documents an example too: the answers captured here
(app/api/response_examples.json, rewritten with CALIPER_UPDATE_EXAMPLES=1), each of the shape of today's
answer and valid against its operation's schema."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from app.api.response_examples import ACCEPTED, EXAMPLES_FILE
from app.core import deadline
from app.examples import EXAMPLE_ID
from app.storage.keys import PREFIX

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_PATH = ROOT / "app" / "api" / EXAMPLES_FILE
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


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


def test_every_request_example_validates_against_its_schema(spec: dict[str, Any]) -> None:
    """The document's own examples (the README's shorthand `"metrics": ["accuracy"]` among them) are valid
    under the schemas a client generator or validator reads (issue 25: three were not)."""
    invalid = {}
    for operations in spec["paths"].values():
        for operation in operations.values():
            found = request_example(spec, operation)
            schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if found is None or schema is None:
                continue
            validator = Draft202012Validator({**schema, "components": spec["components"]})
            errors = [e.message for e in validator.iter_errors(found[1])]
            if errors:
                invalid[operation["operationId"]] = errors[:3]
    assert invalid == {}


def _posted(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post(path, json=body)
    assert answer.status_code in (200, 201), answer.text
    created: dict[str, Any] = answer.json()
    return created


def _until_cancelled() -> Any:
    """A job's work that runs until it is cancelled (checked as a chunked pass checks it)."""
    while True:
        deadline.check()
        time.sleep(0.005)


def _json_answers(spec: dict[str, Any]) -> dict[str, str]:
    """operationId -> status code of every operation that answers JSON on success (not counting the 202
    with a job that a creating POST or a DELETE of a running job may answer: `ACCEPTED`'s example)."""
    return {
        operation["operationId"]: code
        for operations in spec["paths"].values()
        for operation in operations.values()
        for code, response in operation["responses"].items()
        if code.startswith("2") and code != "202" and "application/json" in response.get("content", {})
    }


@pytest.fixture
def answers(client: TestClient, spec: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """Every request example sent (each must answer 2xx), then every JSON GET on what they made:
    operationId -> (status, JSON answer)."""
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
    collected: dict[str, tuple[int, Any]] = {"uploadModel": (201, uploaded.json())}
    model = uploaded.json()["id"]
    evaluation = _posted(client, "/v1/evaluations", example("createEvaluation"))["id"]
    calibrator = _posted(client, "/v1/calibrators", example("createCalibrator"))["id"]
    detector = _posted(client, "/v1/detectors", example("createDetector"))["id"]
    sdm = _posted(client, "/v1/sdm", example("createSdm"))["id"]
    conformal = _posted(client, "/v1/conformal", example("createConformal"))["id"]
    estimate = _posted(client, "/v1/estimates", example("createEstimate"))["id"]
    validation = np.load(ROOT / "models" / "digits_val.npz")
    from_model = {"model_id": model, "inputs": {"x": validation["x"].tolist()}, "labels": validation["labels"].tolist()}
    model_calibrator = _posted(client, "/v1/calibrators", {"method": "temperature", **from_model})["id"]
    baseline = {**example("createEvaluation"), "model": "resnet50", "tags": {"prod": "true"}}
    _posted(client, "/v1/evaluations", baseline)
    ids = {"candidate": evaluation, "model_id": model, "calibrator_id": model_calibrator}

    def with_ids(body: dict[str, Any]) -> dict[str, Any]:
        return {k: ids.get(k, v) if v == EXAMPLE_ID else v for k, v in body.items()}

    pipeline = _posted(client, "/v1/pipelines", with_ids(example("createPipeline")))
    job = client.post("/v1/evaluations", json=example("createEvaluation"), headers={"Prefer": "respond-async"})
    assert job.status_code == 202, job.text
    collected[ACCEPTED] = (202, job.json())
    assert client.get(f"/v1/jobs/{job.json()['id']}").json()["state"] in ("queued", "running", "succeeded")
    resources = client.app.state.resources  # type: ignore[attr-defined]
    assert resources.jobs.wait(job.json()["id"], 30).state == "succeeded"
    blocker = resources.jobs.submit("evaluation", _until_cancelled)  # holds the one job worker
    while resources.jobs.get(blocker.id).state != "running":
        time.sleep(0.005)
    queued = resources.jobs.submit("evaluation", _until_cancelled)  # so this one is still queued: 200 cancelled
    cancelled = client.delete(f"/v1/jobs/{queued.id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
    resources.jobs.cancel(blocker.id)
    assert resources.jobs.wait(blocker.id, 30).state == "cancelled"

    paths = {
        "{evaluation_id}": evaluation, "{calibrator_id}": calibrator, "{detector_id}": detector, "{sdm_id}": sdm,
        "{conformal_id}": conformal, "{estimate_id}": estimate,
        "{model_id}": model, "{name}": pipeline["name"], "{version}": str(pipeline["version"]),
        "{pipeline_id}": pipeline["id"], "{job_id}": job.json()["id"],
    }  # fmt: skip

    def url_of(path: str) -> str:
        for name, value in paths.items():
            path = path.replace(name, value)
        return path

    json_answers = _json_answers(spec)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            operation_id = operation["operationId"]
            if "requestBody" not in operation or operation_id == "uploadModel":  # uploaded above, with its file
                continue
            media, body = examples[operation_id] or ("", {})
            body = with_ids(body)
            assert EXAMPLE_ID not in json.dumps(body), operation_id
            answer = client.request(method.upper(), url_of(path), json=body)
            assert answer.status_code in (200, 201), f"{operation_id} ({media}): {answer.text}"
            if operation_id in json_answers:
                collected[operation_id] = (answer.status_code, answer.json())
    collected["cancelJob"] = (200, cancelled.json())
    paths["{gate_id}"] = collected["createGate"][1]["id"]
    for path, operations in spec["paths"].items():
        operation = operations.get("get")
        if operation is not None and operation["operationId"] in json_answers:
            answer = client.get(url_of(path))
            assert answer.status_code == 200, f"{operation['operationId']}: {answer.text}"
            collected[operation["operationId"]] = (200, answer.json())
    return collected


def test_every_request_example_works(answers: dict[str, tuple[int, Any]]) -> None:
    assert {"createEvaluation", "uploadModel", "createPipeline", "modelInfer", "createKey"} <= answers.keys()


def normalised(value: Any, field: str = "") -> Any:
    """An answer as an example: ids, times and the database URL replaced by fixed ones, the key's secret
    masked, a page cut to its first item, floats to 6 significant digits."""
    if isinstance(value, dict):
        return {name: normalised(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [normalised(item) for item in (value[:1] if field == "items" else value)]
    if isinstance(value, str):
        if field == "key":  # the shape of a real key, with no secret in it
            return f"{PREFIX}{EXAMPLE_ID}_{'x' * 43}"
        if field == "url":
            return "sqlite:///./var/caliper.db"
        if HEX_ID.match(value):
            return EXAMPLE_ID
        return "2026-12-01T12:00:00Z" if TIMESTAMP.match(value) else value
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def shape(value: Any) -> Any:
    """What an answer looks like, without its values: keys, the shape of a list's first item, JSON types."""
    if isinstance(value, dict):
        return {name: shape(item) for name, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def test_every_json_answer_has_an_example_of_its_shape(
    answers: dict[str, tuple[int, Any]], spec: dict[str, Any]
) -> None:
    assert set(_json_answers(spec)) | {ACCEPTED} == set(answers), "an operation answering JSON was not exercised"
    captured = {name: {"status": status, "body": normalised(body)} for name, (status, body) in sorted(answers.items())}
    if os.environ.get("CALIPER_UPDATE_EXAMPLES") == "1":
        EXAMPLES_PATH.write_text(json.dumps(captured, indent=1) + "\n")
    stored = json.loads(EXAMPLES_PATH.read_text())
    assert set(stored) == set(captured), "rewrite app/api/response_examples.json (CALIPER_UPDATE_EXAMPLES=1)"
    for name, example in stored.items():
        assert example["status"] == captured[name]["status"], name
        assert shape(example["body"]) == shape(captured[name]["body"]), f"{name}: the answer changed shape"


def test_every_response_example_fits_its_schema(spec: dict[str, Any]) -> None:
    checked = 0
    for operations in spec["paths"].values():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                media = response.get("content", {}).get("application/json", {})
                if code.startswith("2") and "schema" in media:
                    assert "example" in media, operation["operationId"]
                    validator = Draft202012Validator({**media["schema"], "components": spec["components"]})
                    errors = [error.message for error in validator.iter_errors(media["example"])]
                    assert errors == [], operation["operationId"]
                    checked += 1
    assert checked == sum(
        1
        for operations in spec["paths"].values()
        for operation in operations.values()
        for code, response in operation["responses"].items()
        if code.startswith("2") and "schema" in response.get("content", {}).get("application/json", {})
    )
    assert checked > len(_json_answers(spec))  # the 202 answers of the creating POSTs too

"""X-Request-ID on every answer (the client's when it is a sane token, else a new one), request ids in the
JSON log lines, and GET /metrics in the Prometheus text format with request counts by route template and
status, latencies, and model run time and rows."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.observability import REQUEST_ID, JsonLines
from tests import onnx_models
from tests.conftest import LOCAL
from tests.test_api_models import upload


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_every_answer_carries_a_request_id(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "ci-run-42"})
    assert given.headers["x-request-id"] == "ci-run-42"
    fresh = client.get("/v1/evaluations/nope")
    assert fresh.status_code == 404 and len(fresh.headers["x-request-id"]) == 32
    assert client.get("/healthz").headers["x-request-id"] != fresh.headers["x-request-id"]
    for hostile in (b"a b", b"x" * 129, "é".encode()):
        answer = client.get("/healthz", headers={"X-Request-ID": hostile})  # type: ignore[dict-item]
        assert answer.headers["x-request-id"].encode() != hostile and len(answer.headers["x-request-id"]) == 32
    too_large = client.post("/v1/evaluations", content=b"x" * (9 << 20), headers={"content-type": "application/json"})
    assert too_large.status_code == 413 and "x-request-id" in too_large.headers
    assert "x-request-id" in client.get("/v2/models/nope").headers


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    before = samples(client)
    for evaluation_id in ("a", "b", "c"):
        client.get(f"/v1/evaluations/{evaluation_id}")
    after = samples(client)
    key = (
        "caliper_http_requests_total",
        (("method", "GET"), ("route", "/v1/evaluations/{evaluation_id}"), ("status", "404")),
    )
    assert after[key] - before.get(key, 0.0) == 3
    count = ("caliper_http_request_seconds_count", (("method", "GET"), ("route", "/v1/evaluations/{evaluation_id}")))
    assert after[count] - before.get(count, 0.0) == 3
    assert not any("/v1/evaluations/a" in str(k) for k in after)  # ids never become label values


def test_metrics_report_model_runs(client: TestClient) -> None:
    data, _ = onnx_models.mlp()
    model = upload(client, data).json()
    before = samples(client)
    x = np.ones((100, 6))
    assert client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": x.tolist()}}).status_code == 200
    after = samples(client)
    assert after[("caliper_model_rows_total", ())] - before.get(("caliper_model_rows_total", ()), 0.0) == 100
    calls = after[("caliper_model_run_seconds_count", ())] - before.get(("caliper_model_run_seconds_count", ()), 0.0)
    assert calls == 2  # 100 rows in chunks of CALIPER_MODEL_BATCH_ROWS = 64


def test_log_lines_are_json_with_the_request_id() -> None:
    token = REQUEST_ID.set("req-7")
    try:
        record = logging.LogRecord("caliper", logging.WARNING, __file__, 1, "database unavailable: %s", ("down",), None)
        line = json.loads(JsonLines().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "req-7" and line["message"] == "database unavailable: down"
    assert line["level"] == "WARNING" and line["logger"] == "caliper"


def test_each_request_writes_one_json_access_line_with_its_project_route_status_and_rows(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="caliper.access"):
        created = client.post(
            "/v1/evaluations", json={"logits": np.zeros((5, 3)).tolist(), "labels": [0, 1, 2, 0, 1]},
            headers={"X-Request-ID": "ci-9"},
        )  # fmt: skip
        client.get("/v1/evaluations/nope")
    assert created.status_code == 201
    lines = [json.loads(JsonLines().format(r)) for r in caplog.records if r.name == "caliper.access"]
    assert len(lines) == 2
    post, missing = lines
    assert post["request_id"] == "ci-9" and post["project"] == "default" and post["method"] == "POST"
    assert post["route"] == "/v1/evaluations" and post["status"] == 201 and post["rows"] == 5
    assert post["duration_ms"] > 0
    assert missing["route"] == "/v1/evaluations/{evaluation_id}" and missing["status"] == 404 and missing["rows"] == 0


def test_metrics_count_refusals_and_database_errors(tmp_path: Path) -> None:
    from app.api.main import create_app
    from app.config import Settings

    app = create_app(Settings(database_url="sqlite:////", artifact_dir=tmp_path, rate_limit="2/minute"))
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        statuses = [client.get("/v1/evaluations").status_code for _ in range(3)]
        assert statuses == [503, 503, 429]
        counted = samples(client)
    assert counted[("caliper_database_errors_total", (("kind", "unavailable"),))] == 2
    assert counted[("caliper_refused_requests_total", (("reason", "rate-limit"),))] == 1


def test_refusals_before_routing_are_counted_under_their_route(tmp_path: Path) -> None:
    """Issue 25: 503s answered by a middleware while the database was down were labelled route="unmatched"."""
    from app.api.main import create_app
    from app.config import Settings

    app = create_app(Settings(database_url="sqlite:////", artifact_dir=tmp_path, rate_limit=""))
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        keyed = {"Idempotency-Key": "k"}  # refused by the idempotency middleware, before any route runs
        assert (
            client.post("/v1/evaluations", json={"logits": [[1.0, 0.0]], "labels": [0]}, headers=keyed).status_code
            == 503
        )
        counted = samples(client)
    labels = (("method", "POST"), ("route", "/v1/evaluations"), ("status", "503"))
    assert counted[("caliper_http_requests_total", labels)] == 1


def test_a_client_that_leaves_mid_body_is_a_499_not_a_server_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    messages = iter([{"type": "http.request", "body": b'{"logits": [[1.0', "more_body": True}])

    async def receive() -> dict[str, object]:
        return next(messages, {"type": "http.disconnect"})

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/evaluations", "raw_path": b"/v1/evaluations", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000), "server": ("localhost", 80),
    }  # fmt: skip
    with caplog.at_level(logging.INFO, logger="caliper"):
        asyncio.run(client.app(scope, receive, send))  # type: ignore[arg-type]
    assert not [m for m in sent if m["type"] == "http.response.start"]  # nobody to answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    labels = (("method", "POST"), ("route", "/v1/evaluations"), ("status", "499"))
    counted = samples(client)
    assert counted.get(("caliper_http_requests_total", labels)) == 1, [k for k in counted if "499" in str(k)]


def test_metrics_report_onnxruntime_time_by_graph_kind_and_rows_by_route(client: TestClient) -> None:
    before = samples(client)
    body = {"logits": np.zeros((9, 3)).tolist(), "labels": [0, 1, 2] * 3}
    assert client.post("/v1/evaluations", json=body).status_code == 201
    after = samples(client)
    runs = ("caliper_onnxruntime_run_seconds_count", (("kind", "evaluation"),))
    assert after[runs] - before.get(runs, 0.0) >= 2  # 9 rows in chunks of the suite's CALIPER_CHUNK_SIZE = 7
    rows = ("caliper_request_rows_total", (("route", "/v1/evaluations"),))
    assert after[rows] - before.get(rows, 0.0) == 9


def test_generated_request_ids_are_distinct_hex_of_a_uuids_length() -> None:
    from app.api.observability import new_request_id

    made = [new_request_id() for _ in range(10_000)]
    assert len(set(made)) == len(made) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)


def test_a_forked_process_makes_other_request_ids() -> None:
    import os

    from app.api.observability import new_request_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, to the parent
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32 and child[:20] != new_request_id()[:20]

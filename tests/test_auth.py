"""API keys and projects (api.md, "Conventions"): every protected operation of the OpenAPI schema is walked
with no key, a bad key, a revoked key and a read key, and with another project's key on the first
project's ids and lists, so that a new route cannot forget any of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from caliper_client import CaliperClient, CaliperError
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.auth import PROTECTED
from app.api.main import create_app
from app.config import Settings
from app.storage.migrate import upgrade
from tests.conftest import LOCAL
from tests.test_api_models import upload
from tests.test_export import fit_heads, make_data

PARAM = re.compile(r"\{(\w+)\}")


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    folder = tmp_path_factory.mktemp("auth")
    settings = Settings(
        database_url=f"sqlite:///{folder / 'auth.db'}", artifact_dir=folder / "artifacts", auth="required",
        model_workers=1, model_timeout_s=30.0,
    )  # fmt: skip
    upgrade(settings)
    app = create_app(settings)
    yield app
    app.state.resources.close()


@pytest.fixture(scope="module")
def keys(auth_app: FastAPI) -> dict[str, str]:
    made = auth_app.state.resources.api_keys
    tokens = {
        "a_write": made.create("team-a", "write", "ci")[1],
        "a_read": made.create("team-a", "read")[1],
        "a_admin": made.create("team-a", "admin")[1],
        "b_write": made.create("team-b", "write")[1],
    }
    revoked, tokens["revoked"] = made.create("team-a", "admin")
    made.revoke(revoked.id)
    return tokens


def as_key(app: FastAPI, token: str | None) -> TestClient:
    return TestClient(
        app,
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        base_url=LOCAL,
    )


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    schema = app.openapi()
    return [
        (method.upper(), path, operation)
        for path, methods in schema["paths"].items()
        if path.startswith(PROTECTED)
        for method, operation in methods.items()
    ]


@pytest.fixture(scope="module")
def project_a(auth_app: FastAPI, keys: dict[str, str]) -> dict[str, Any]:
    """One of every resource, made with team-a's write key."""
    client = as_key(auth_app, keys["a_write"])
    data, x, outputs, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    logits = outputs["logits"].tolist()
    evaluation = client.post("/v1/evaluations", json={"logits": logits, "labels": labels.tolist()}).json()
    baseline = client.post("/v1/evaluations", json={"logits": logits, "labels": labels.tolist()}).json()
    gate = client.post(
        "/v1/gates",
        json={"candidate": evaluation["id"], "baseline": baseline["id"],
              "rules": [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.1}]},
    )  # fmt: skip
    assert gate.status_code == 201, gate.text
    gate = gate.json()
    pipeline = client.post("/v1/pipelines", json={"name": "digits", "model_id": model["id"], **heads}).json()
    job = client.post(
        "/v1/evaluations", json={"logits": logits, "labels": labels.tolist()}, headers={"Prefer": "respond-async"}
    ).json()
    conformal = client.post("/v1/conformal", json={"method": "aps", "logits": logits, "labels": labels.tolist()}).json()
    estimate = client.post("/v1/estimates", json={"logits": logits}).json()
    key_id = client.get("/v1/keys", headers={"Authorization": f"Bearer {keys['a_admin']}"}).json()["items"][0]["id"]
    return {
        "ids": {
            "evaluation_id": evaluation["id"], "calibrator_id": heads["calibrator_id"], "gate_id": gate["id"],
            "detector_id": heads["detector_id"], "sdm_id": heads["sdm_id"], "model_id": model["id"],
            "pipeline_id": pipeline["id"], "key_id": key_id, "name": "digits", "version": "1", "job_id": job["id"],
            "conformal_id": conformal["id"], "estimate_id": estimate["id"],
        },
        "x": x[:4].tolist(),
        "logits": outputs["logits"][:4].tolist(),
        "embedding": outputs["embedding"][:4].tolist(),
        "labels": labels[:4].tolist(),
    }  # fmt: skip


def valid_body(operation_id: str, a: dict[str, Any]) -> dict[str, Any] | None:
    """A body that the operation accepts, so that only the id can make it fail."""
    x, logits, embedding, labels = a["x"], a["logits"], a["embedding"], a["labels"]
    infer = {"inputs": [{"name": "x", "shape": [4, 6], "datatype": "FP32", "data": np.ravel(x).tolist()}]}
    return {
        "setEvaluationTags": {"tags": {"prod": "true"}},
        "applyCalibrator": {"logits": logits},
        "scoreDetector": {"features": embedding},
        "scoreSdm": {"embeddings": embedding, "logits": logits},
        "predictConformal": {"logits": logits},
        "evaluateModel": {"inputs": {"x": x}, "labels": labels},
        "predict": {"inputs": {"x": x}},
        "modelInfer": infer,
        "modelVersionInfer": infer,
    }.get(operation_id)


def call(client: TestClient, method: str, path: str, ids: dict[str, str], body: Any = None) -> Any:
    url = PARAM.sub(lambda m: ids.get(m.group(1), "0" * 32), path)
    return client.request(method, url, json=body)


def test_every_protected_operation_refuses_no_key_a_bad_key_and_a_revoked_key(
    auth_app: FastAPI, keys: dict[str, str]
) -> None:
    walked = operations(auth_app)
    assert len(walked) >= 50
    for token in (None, "caliper_" + "0" * 32 + "_nope", "not-a-key", keys["revoked"]):
        client = as_key(auth_app, token)
        for method, path, operation in walked:
            response = call(client, method, path, {})
            assert response.status_code == 401, (token, method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "401" in operation["responses"] and operation["security"]
            error = response.json()
            assert ("error" in error) if path.startswith("/v2") else error["status"] == 401
    # X-API-Key is the other way to present a key; unprotected routes need none
    assert as_key(auth_app, None).get("/v1/evaluations", headers={"X-API-Key": keys["a_read"]}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert as_key(auth_app, None).get(path).status_code == 200, path


def test_a_read_key_may_read_but_not_write(auth_app: FastAPI, keys: dict[str, str], project_a: dict[str, Any]) -> None:
    reader = as_key(auth_app, keys["a_read"])
    for method, path, operation in operations(auth_app):
        body = valid_body(operation["operationId"], project_a)
        response = call(reader, method, path, project_a["ids"], body)
        if operation["x-caliper-role"] == "read":
            assert response.status_code not in (401, 403), (method, path, response.text)
        else:
            assert response.status_code == 403, (method, path, response.text)
            assert "needs " + operation["x-caliper-role"] in response.json()["detail"]
    assert reader.get(f"/v1/models/{project_a['ids']['model_id']}").status_code == 200  # nothing was deleted


def test_another_projects_ids_are_unknown_and_its_lists_are_empty(
    auth_app: FastAPI, keys: dict[str, str], project_a: dict[str, Any]
) -> None:
    other = as_key(auth_app, keys["b_write"])
    admin_b = as_key(auth_app, auth_app.state.resources.api_keys.create("team-b", "admin")[1])
    for method, path, operation in operations(auth_app):
        client = admin_b if operation["x-caliper-role"] == "admin" else other
        if PARAM.search(path):
            body = valid_body(operation["operationId"], project_a)
            if method == "POST":
                assert body is not None, f"give {operation['operationId']} a valid body here"
            response = call(client, method, path, project_a["ids"], body)
            assert response.status_code == 404, (method, path, response.text)
        elif method == "GET" and operation["operationId"].startswith("list"):
            response = client.get(path)
            assert response.status_code == 200 and all(
                item.get("project", "team-b") == "team-b" for item in response.json()["items"]
            ), path
            if operation["operationId"] != "listKeys":
                assert response.json()["items"] == [], path
    # team-a still has everything
    owner = as_key(auth_app, keys["a_write"])
    for name in ("evaluations", "calibrators", "detectors", "sdm", "models", "pipelines", "gates", "jobs"):
        assert len(owner.get(f"/v1/{name}").json()["items"]) >= 1, name


def test_a_baseline_tag_and_writes_that_name_other_ids_stay_in_their_project(
    auth_app: FastAPI, keys: dict[str, str], project_a: dict[str, Any]
) -> None:
    other = as_key(auth_app, keys["b_write"])
    a = project_a["ids"]
    evaluation = other.post("/v1/evaluations", json={"logits": project_a["logits"], "labels": project_a["labels"]})
    mine = evaluation.json()["id"]
    gate = {
        "candidate": mine,
        "baseline": a["evaluation_id"],
        "rules": [{"metric": "accuracy", "op": "min", "value": 0}],
    }
    assert other.post("/v1/gates", json=gate).status_code == 404  # team-a's evaluation is not a baseline here
    a_owner = as_key(auth_app, keys["a_write"])
    a_owner.post(f"/v1/evaluations/{a['evaluation_id']}/tags", json={"tags": {"prod": "true"}})
    by_tag = {**gate, "baseline": {"tag": "prod"}}
    assert other.post("/v1/gates", json=by_tag).status_code == 404  # nor found by its tag
    for body in (
        {
            "method": "temperature",
            "model_id": a["model_id"],
            "inputs": {"x": project_a["x"]},
            "labels": project_a["labels"],
        },
        {"name": "digits", "model_id": a["model_id"]},
    ):
        path = "/v1/calibrators" if "method" in body else "/v1/pipelines"
        assert other.post(path, json=body).status_code == 404, path
    predict = {"inputs": {"x": project_a["x"]}, "calibrator_id": a["calibrator_id"]}
    own_model = upload(other, make_data(np.float32)[0], embedding_output="embedding").json()["id"]
    assert other.post(f"/v1/models/{own_model}/predict", json=predict).status_code == 404  # team-a's head


def test_pipeline_names_and_idempotency_keys_belong_to_their_project(
    auth_app: FastAPI, keys: dict[str, str], project_a: dict[str, Any]
) -> None:
    other = as_key(auth_app, keys["b_write"])
    model = upload(other, make_data(np.float32, seed=3)[0]).json()["id"]
    created = other.post("/v1/pipelines", json={"name": "digits", "model_id": model})
    assert created.status_code == 201 and created.json()["version"] == 1  # team-a's "digits" is another name
    assert other.get("/v2/models/digits").json()["versions"] == ["1"]
    body = {"logits": project_a["logits"], "labels": project_a["labels"]}
    key = {"Idempotency-Key": "same-key-in-two-projects"}
    first = other.post("/v1/evaluations", json=body, headers=key)
    second = as_key(auth_app, keys["a_write"]).post("/v1/evaluations", json=body, headers=key)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"] and "idempotent-replayed" not in second.headers
    again = other.post("/v1/evaluations", json=body, headers=key)
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"


def test_admin_keys_manage_their_own_project_only(auth_app: FastAPI, keys: dict[str, str]) -> None:
    admin = as_key(auth_app, keys["a_admin"])
    made = admin.post("/v1/keys", json={"role": "read", "name": "dashboards"})
    assert made.status_code == 201 and made.json()["project"] == "team-a" and made.json()["key"].startswith("caliper_")
    assert made.json()["created_at"].endswith("Z")
    new = as_key(auth_app, made.json()["key"])
    assert new.get("/v1/evaluations").status_code == 200
    listed = admin.get("/v1/keys").json()["items"]
    assert {k["project"] for k in listed} == {"team-a"} and all("key" not in k for k in listed)
    b_key = auth_app.state.resources.api_keys.list("team-b")[0].id
    assert admin.delete(f"/v1/keys/{b_key}").status_code == 404
    assert admin.delete(f"/v1/keys/{made.json()['id']}").status_code == 204
    assert new.get("/v1/evaluations").status_code == 401  # at once
    assert as_key(auth_app, keys["a_write"]).post("/v1/keys", json={}).status_code == 403


def test_a_key_revoked_by_another_process_is_refused_within_a_second(auth_app: FastAPI) -> None:
    from app.storage.keys import ApiKeyRepository

    other_process = ApiKeyRepository(auth_app.state.resources.database)  # e.g. `caliper keys revoke`
    record, token = other_process.create("team-a", "read")
    client = as_key(auth_app, token)
    assert client.get("/v1/evaluations").status_code == 200  # passed: remembered here for up to 1 s
    other_process.revoke(record.id)
    time.sleep(1.1)
    assert client.get("/v1/evaluations").status_code == 401


def test_the_client_sends_the_key_from_the_environment(
    auth_app: FastAPI, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIPER_API_KEY", keys["a_read"])
    reader = CaliperClient(TestClient(auth_app, raise_server_exceptions=False, base_url=LOCAL))
    assert reader.list_evaluations()["items"]
    with pytest.raises(CaliperError) as refused:
        reader.delete_evaluation(reader.list_evaluations()["items"][0]["id"])
    assert refused.value.status == 403


def test_auth_defaults_by_address_and_the_cli_makes_lists_and_revokes_keys(tmp_path: Path) -> None:
    assert not Settings(host="127.0.0.1").auth_required() and not Settings(host="::1").auth_required()
    assert Settings(host="0.0.0.0").auth_required() and Settings(host="10.1.2.3").auth_required()
    assert not Settings(host="0.0.0.0", auth="disabled").auth_required()
    assert Settings(host="127.0.0.1", auth="required").auth_required()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CALIPER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'keys.db'}"

    def caliper(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True)

    unmigrated = caliper("keys", "list")
    assert unmigrated.returncode == 2 and "caliper db upgrade" in unmigrated.stderr
    assert caliper("db", "upgrade").returncode == 0
    made = caliper("keys", "create", "--project", "team-a", "--role", "read", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["key"].startswith(f"caliper_{key['id']}_") and key["role"] == "read"
    listed = caliper("keys", "list", "--json")
    assert [k["id"] for k in json.loads(listed.stdout)] == [key["id"]] and key["key"] not in listed.stdout
    assert caliper("keys", "create", "--project", "bad name").returncode == 2
    assert caliper("keys", "revoke", key["id"]).returncode == 0
    assert caliper("keys", "revoke", key["id"]).returncode == 2  # no longer live
    assert json.loads(caliper("keys", "list", "--json").stdout)[0]["revoked"] is True


def test_a_cross_site_write_is_refused_even_with_auth_disabled(client: TestClient) -> None:
    body = {"logits": [[2.0, 0.5], [0.1, 0.2]], "labels": [0, 1]}
    refused = client.post("/v1/evaluations", json=body, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "cross-origin" in refused.json()["detail"]
    assert client.get("/v1/evaluations").json()["items"] == []  # nothing stored
    same = client.post("/v1/evaluations", json=body, headers={"Origin": "http://localhost"})
    assert same.status_code == 201
    assert client.get("/v1/evaluations", headers={"Origin": "https://evil.example"}).status_code == 200  # reads


def test_a_keyless_server_answers_only_the_hosts_it_is_named_by(client: TestClient, auth_app: FastAPI) -> None:
    """DNS rebinding (issue 25): a page on attacker.example whose name is rebound to 127.0.0.1 sends
    Host and Origin alike; its DELETE was answered 204. A keyless server answers only loopback names."""
    made = client.post("/v1/evaluations", json={"logits": [[2.0, 0.5]], "labels": [0]}).json()
    rebound = {"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"}
    refused = client.delete(f"/v1/evaluations/{made['id']}", headers=rebound)
    assert refused.status_code == 400 and "CALIPER_ALLOWED_HOSTS" in refused.json()["detail"]
    assert client.get("/v1/evaluations", headers={"Host": "attacker.example"}).status_code == 400  # reads too
    assert client.get(f"/v1/evaluations/{made['id']}").status_code == 200  # still there
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    with as_key(auth_app, None) as keyed:  # keys required: any Host (the key is what protects it)
        assert keyed.get("/healthz", headers={"Host": "caliper.example.com"}).status_code == 200


@pytest.mark.parametrize(
    ("given", "allowed", "refused"),
    [
        ("", {"localhost", "127.0.0.1", "::1"}, "caliper.internal"),
        ("caliper.internal, [::1]", {"caliper.internal", "::1"}, "localhost"),
        ("*", None, None),
    ],
)
def test_allowed_hosts_setting(given: str, allowed: set[str] | None, refused: str | None) -> None:
    settings = Settings(allowed_hosts=given)
    names = settings.host_names()
    assert names is None if allowed is None else (names is not None and allowed <= names and refused not in names)


def test_the_web_report_signs_in_with_a_cookie_that_only_reads(auth_app: FastAPI, keys: dict[str, str]) -> None:
    """Without a key a page redirects to the sign-in form (its assets are public); the form keeps the key in
    an HTTP-only cookie that authorises reads of its project and never a write."""
    browser = as_key(auth_app, None)
    away = browser.get("/ui/evaluations?model=m", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/ui/login?next=%2Fui%2Fevaluations%3Fmodel%3Dm"
    assert browser.get("/ui/login").status_code == 200 and browser.get("/ui/static/caliper.css").status_code == 200
    assert browser.get("/v1/evaluations").status_code == 401  # the API still answers its problem
    signed = browser.post("/ui/login", data={"key": keys["a_write"], "next": "//evil.example/"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/"  # no open redirect
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert browser.get("/ui/evaluations").status_code == 200
    assert browser.get("/v1/evaluations").status_code == 200  # a read, with the cookie
    written = browser.post("/v1/evaluations", json={"logits": [[1.0, 0.0]], "labels": [0]})
    assert written.status_code == 401  # a cookie never authorises a write
    browser.cookies.set("caliper_key", "not-a-key")
    refused = browser.get("/ui/", follow_redirects=False)
    assert refused.status_code == 303 and "failed=1" in refused.headers["location"]

"""Idempotency-Key on POSTs: a repeat with the same body answers the first answer (nothing stored twice),
another body or route is 422, a concurrent duplicate is resolved by the key's primary key (one stored,
the other 409 or the replay), a server error releases the key, and keys expire."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.config import DEFAULT_PROJECT
from app.storage.tenancy import project_scope
from tests.conftest import Y_A, Z_A, count_rows
from tests.test_api_bad_input import assert_problem
from tests.test_api_models import resources

BODY = {"logits": Z_A.tolist(), "labels": Y_A.tolist()}


def post(client: TestClient, key: str, body: dict[str, Any] = BODY, path: str = "/v1/evaluations") -> Any:
    return client.post(path, json=body, headers={"Idempotency-Key": key})


def evaluations(client: TestClient) -> int:
    return count_rows(client.app)["evaluations"]  # type: ignore[arg-type]


def test_a_repeat_answers_the_first_answer_and_stores_nothing_twice(client: TestClient) -> None:
    first = post(client, "k-1")
    assert first.status_code == 201
    again = post(client, "k-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # the repeat's own id
    assert evaluations(client) == 1
    assert post(client, "k-2").json()["id"] != first.json()["id"]  # another key: another request


def test_the_same_key_with_another_body_or_route_is_422(client: TestClient) -> None:
    post(client, "k-3")
    other = post(client, "k-3", {**BODY, "model": "other"})
    assert_problem(other, 422)
    assert "Idempotency-Key" in other.json()["detail"]
    assert_problem(post(client, "k-3", {"logits": Z_A.tolist(), "methods": ["msp"]}, "/v1/ood/scores"), 422)
    assert evaluations(client) == 1


def test_multipart_bodies_and_refusals_are_replayed(client: TestClient) -> None:
    files = {"request": (None, '{"model": "m"}', "application/json"), "logits": ("z.npy", b"not npy")}
    first = client.post("/v1/evaluations", files=files, headers={"Idempotency-Key": "k-4"})
    assert first.status_code in (400, 422)
    again = client.post("/v1/evaluations", files=files, headers={"Idempotency-Key": "k-4"})
    assert (again.status_code, again.json()) == (first.status_code, first.json())  # another boundary, the same parts


def test_concurrent_duplicates_run_once(client: TestClient) -> None:
    answers: list[Any] = []

    def send() -> None:
        answers.append(post(client, "k-5"))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert evaluations(client) == 1
    created = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(created) == 1 and all(a.status_code in (201, 409) for a in answers)
    assert all(a.headers.get("retry-after") == "1" for a in answers if a.status_code == 409)


def test_a_server_error_releases_the_key(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    service = resources(client).evaluations
    real = service.create

    def down(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(service, "create", real)
        raise OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(service, "create", down)
    assert_problem(post(client, "k-6"), 503)
    retried = post(client, "k-6")
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert evaluations(client) == 1


def test_keys_expire_and_bad_keys_are_400(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    first = post(client, "k-7")
    monkeypatch.setattr(resources(client).idempotency, "retention", timedelta(seconds=-1))
    later = post(client, "k-7")
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert_problem(client.post("/v1/evaluations", json=BODY, headers={"Idempotency-Key": "x" * 256}), 400)
    assert_problem(client.post("/v1/evaluations", json=BODY, headers={"Idempotency-Key": " "}), 400)
    assert client.post("/v1/evaluations", json=BODY).status_code == 201  # no key: no idempotency


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_the_body_digest_ignores_the_multipart_boundary_across_chunk_cuts(chunk: int) -> None:
    from app.api.idempotency import BodyDigest

    def digest(boundary: bytes, parts: bytes) -> str:
        body = parts.replace(b"BOUNDARY", boundary)
        scope = {"headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)]}
        hashed = BodyDigest(scope)
        for start in range(0, len(body), chunk):
            hashed.update(body[start : start + chunk])
        return hashed.hexdigest()

    parts = b'--BOUNDARY\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--BOUNDARY--\r\n'
    assert digest(b"abc123", parts) == digest(b"zz9", parts)
    assert digest(b"abc123", parts) != digest(b"abc123", parts.replace(b"\r\n1\r\n", b"\r\n2\r\n"))


def test_a_body_that_arrived_too_slowly_releases_the_key(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 408 is the transport's fault, not the request's answer: the retry runs (issue 25: it was replayed
    for 24 h, and the retry with the whole body got 422)."""
    from app.api.limits import BodyTimeoutError

    service = resources(client).evaluations
    real = service.create

    def slow(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(service, "create", real)
        raise BodyTimeoutError()

    monkeypatch.setattr(service, "create", slow)
    assert_problem(post(client, "k-8"), 408)
    retried = post(client, "k-8")
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers


def test_the_record_is_settled_before_the_answer_ends(client: TestClient) -> None:
    """A client that repeats a request the moment it has the answer finds it done, never a 409."""
    from app.api.idempotency import Idempotency

    repository = resources(client).idempotency
    seen: list[str] = []

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"made", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def observed_send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            seen.append(repository.claim("k-9", "POST /x").state)  # type: ignore[union-attr]

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"idempotency-key", b"k-9")]}
    import asyncio

    with project_scope(DEFAULT_PROJECT):
        asyncio.run(Idempotency(answer, repository)(scope, receive, observed_send))
    assert seen == ["done"]


def test_a_new_api_key_is_never_stored_for_replay(client: TestClient) -> None:
    made = client.post("/v1/keys", json={"role": "read", "name": "ci"}, headers={"Idempotency-Key": "k-10"})
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    token = made.json()["key"]
    with resources(client).database() as session:
        stored = session.execute(text("select body, headers from idempotency_keys")).all()
    assert stored and not any(token.encode() in (body or b"") or token in str(headers) for body, headers in stored)
    again = client.post("/v1/keys", json={"role": "read", "name": "ci"}, headers={"Idempotency-Key": "k-10"})
    assert_problem(again, 409)
    assert "GET /v1/keys" in again.json()["detail"] and "retry-after" not in again.headers
    assert len(client.get("/v1/keys").json()["items"]) == 1

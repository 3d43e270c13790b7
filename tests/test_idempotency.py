"""Idempotency-Key on POSTs: a repeat with the same body answers the first answer (nothing stored twice),
another body or route is 422, a concurrent duplicate is resolved by the key's primary key (one stored,
the other 409 or the replay), a server error releases the key, and keys expire."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

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

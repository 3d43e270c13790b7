"""Limits and backpressure (issue "Trust"): the request time limit, the bound on concurrent work (503 with
Retry-After), per-key rate limits (429), database timeouts, and slow clients against a real
`caliper serve` on loopback (header and body deadlines, a connection flood under a low open-file limit),
and several server processes that survive one of them dying."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from app.api.main import create_app
from app.config import Settings
from app.core import deadline
from app.core.runtime import default_cache
from app.storage import db
from app.storage.db import make_engine
from app.storage.migrate import upgrade
from tests.conftest import LOCAL, Y_A, Z_A, count_rows

CALIPER = [sys.executable, "-m", "app.cli"]
BODY = {"logits": Z_A.tolist(), "labels": Y_A.tolist()}


def make_app(tmp_path: Path, **overrides: object) -> FastAPI:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'limits.db'}", artifact_dir=tmp_path / "a", **overrides)
    upgrade(settings)
    return create_app(settings)


def refusals(client: TestClient) -> dict[str, float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {
        s.labels["reason"]: s.value
        for family in families
        for s in family.samples
        if s.name == "caliper_refused_requests_total"
    }


# -- the time limit ------------------------------------------------------------------------------------


def test_a_session_run_past_the_time_limit_stops_and_one_within_it_runs() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    session = default_cache().create(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    feeds = {"x": np.array([-1.0, 2.0], dtype=np.float32)}
    with deadline.time_limit(60.0):
        assert session.run(None, feeds)
    with deadline.time_limit(0.0), pytest.raises(deadline.TimeLimitError, match="time limit of 0 s"):
        time.sleep(0.001)
        session.run(None, feeds)
    assert session.run(None, feeds)  # no limit outside the block


def test_work_over_the_request_time_limit_answers_422_and_stores_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path, request_timeout_s=1e-6)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4))
    fit = {"method": "temperature", "logits": logits.tolist(), "labels": rng.integers(0, 4, 400).tolist(), "cv": 5}
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        for path, body in (("/v1/calibrators", fit), ("/v1/evaluations", BODY)):
            answer = client.post(path, json=body)
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"].endswith("/time-limit") and "CALIPER_REQUEST_TIMEOUT_S" in answer.text
            assert client.get(path).json()["items"] == []
        assert client.get("/v1/evaluations").status_code == 200  # reads have no time limit
    app.state.resources.close()


# -- concurrency bound ---------------------------------------------------------------------------------


def _hold_work(app: FastAPI) -> threading.Event:
    """Every evaluation's work waits until the returned event is set: the POSTs hold their slots until then."""
    service = app.state.resources.evaluations
    real, release = service.create, threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(30)
        return real(*args, **kwargs)

    service.create = held
    return release


async def _trickled_post(client: httpx.AsyncClient, release: asyncio.Event) -> httpx.Response:
    """A POST whose body's end arrives only when `release` is set."""
    payload = httpx.Request("POST", "/", json=BODY).content

    async def body() -> AsyncIterator[bytes]:
        yield payload[:10]
        await release.wait()
        yield payload[10:]

    return await client.post("/v1/evaluations", content=body(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("waiting", [0, 1])
def test_beyond_the_running_and_waiting_posts_a_post_answers_503_with_retry_after(tmp_path: Path, waiting: int) -> None:
    app = make_app(tmp_path, max_running_work=1, max_waiting_work=waiting)
    release = _hold_work(app)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            held = [asyncio.create_task(client.post("/v1/evaluations", json=BODY)) for _ in range(1 + waiting)]
            await asyncio.sleep(0.3)  # the held POSTs are admitted or queued
            refused = await client.post("/v1/evaluations", json=BODY)
            read = await client.get("/v1/evaluations")  # reads are not bounded
            release.set()
            return list(await asyncio.gather(*held)), refused, read

    held, refused, read = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
    assert refused.json()["type"].endswith("/overloaded") and "CALIPER_MAX_RUNNING_WORK" in refused.text
    assert read.status_code == 200
    assert [r.status_code for r in held] == [201] * (1 + waiting)  # the admitted and the queued ones ran
    with TestClient(app, base_url=LOCAL) as client:
        assert client.post("/v1/evaluations", json=BODY).status_code == 201  # slots are given back
        assert refusals(client)["overloaded"] == 1
    app.state.resources.close()


def test_a_model_export_takes_a_work_slot_and_the_time_limit(tmp_path: Path) -> None:
    """Issue 25: 8 parallel exports of a large model (a GET) ran with no admission or limit."""
    from tests import onnx_models

    def upload(client: TestClient) -> str:
        files = {"file": ("m.onnx", onnx_models.mlp()[0], "application/octet-stream")}
        return str(client.post("/v1/models", files=files, data={"request": '{"name": "m"}'}).json()["id"])

    limited = make_app(tmp_path / "limited", request_timeout_s=1e-6)
    with TestClient(limited, raise_server_exceptions=False, base_url=LOCAL) as client:
        model_id = upload(client)
        answer = client.get(f"/v1/models/{model_id}/export")
        assert answer.status_code == 422 and answer.json()["type"].endswith("/time-limit"), answer.text
    limited.state.resources.close()

    app = make_app(tmp_path, max_running_work=1, max_waiting_work=0)
    with TestClient(app, base_url=LOCAL) as client:
        model_id = upload(client)
    release = _hold_work(app)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            held = asyncio.create_task(client.post("/v1/evaluations", json=BODY))
            await asyncio.sleep(0.3)
            refused = await client.get(f"/v1/models/{model_id}/export")
            release.set()
            return await held, refused

    held, refused = asyncio.run(scenario())
    assert held.status_code == 201 and refused.status_code == 503, refused.text
    assert refused.json()["type"].endswith("/overloaded")
    app.state.resources.close()


def test_slow_bodies_hold_no_slot_and_one_caller_reads_a_bounded_number(tmp_path: Path) -> None:
    """Issue 25: 70 trickling uploads from one key made every other POST answer 503. Bodies are read
    before a slot is taken, so a fast POST runs beside trickling ones; one caller's trickling bodies are
    capped (CALIPER_MAX_READING_PER_CALLER), and every trickled one runs once its body is in."""
    app = make_app(tmp_path, max_running_work=1, max_waiting_work=3, max_reading_per_caller=3)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            release = asyncio.Event()
            trickling = [asyncio.create_task(_trickled_post(client, release)) for _ in range(3)]
            await asyncio.sleep(0.3)
            capped = await _trickled_post(client, asyncio.Event())  # a 4th: refused before its body is read
            other = httpx.ASGITransport(app=app, client=("192.0.2.7", 4000))  # another caller (no traffic: ASGI)
            async with httpx.AsyncClient(transport=other, base_url=LOCAL) as second:
                fast = await asyncio.wait_for(second.post("/v1/evaluations", json={**BODY, "store": False}), 10)
            release.set()
            return list(await asyncio.gather(*trickling)), capped, fast

    trickled, capped, fast = asyncio.run(scenario())
    assert fast.status_code == 201, fast.text  # the single slot was free: the trickling bodies hold none
    assert capped.status_code == 503 and "CALIPER_MAX_READING_PER_CALLER" in capped.text
    assert [r.status_code for r in trickled] == [201] * 3
    app.state.resources.close()


def test_time_queued_for_a_slot_does_not_count_against_the_body_deadline(tmp_path: Path) -> None:
    """Issue 25: POSTs queued behind busy slots got 408 "body arrived too slowly"; their bodies had arrived."""
    app = make_app(tmp_path, max_running_work=1, max_waiting_work=4, body_timeout_s=0.5, body_min_bytes_per_s=1 << 30)
    release = _hold_work(app)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            posts = [asyncio.create_task(client.post("/v1/evaluations", json=BODY)) for _ in range(3)]
            await asyncio.sleep(1.5)  # three times the body deadline, queued
            release.set()
            return list(await asyncio.gather(*posts))

    assert [r.status_code for r in asyncio.run(scenario())] == [201] * 3
    app.state.resources.close()


# -- rate limits ---------------------------------------------------------------------------------------


def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_other_keys_do_not(tmp_path: Path) -> None:
    app = make_app(tmp_path, auth="required", rate_limit="3/minute")
    first = app.state.resources.api_keys.create("team-a", "write")[1]
    second = app.state.resources.api_keys.create("team-a", "read")[1]
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        as_first = {"Authorization": f"Bearer {first}"}
        assert [client.get("/v1/evaluations", headers=as_first).status_code for _ in range(3)] == [200] * 3
        limited = client.post("/v1/evaluations", json=BODY, headers=as_first)
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 60 and "CALIPER_RATE_LIMIT" in limited.text
        assert client.get("/v1/evaluations", headers=as_first).status_code == 429  # nothing stored, still limited
        assert client.get("/v1/evaluations", headers={"Authorization": f"Bearer {second}"}).status_code == 200
        v2 = client.get("/v2/health/ready", headers=as_first).json()
        seconds = re.compile(r"retry in \d+ s")  # a second may pass between the two answers
        assert set(v2) == {"error"} and seconds.sub("", v2["error"]) == seconds.sub("", limited.json()["detail"])
        assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5  # health is not limited
        assert refusals(client)["rate-limit"] == 3
    assert count_rows(app)["evaluations"] == 0
    app.state.resources.close()


def test_a_malformed_rate_limit_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        Settings(rate_limit="many per second")


# -- database timeouts ---------------------------------------------------------------------------------


@pytest.mark.skipif("CALIPER_TEST_POSTGRES_URL" not in os.environ, reason="needs PostgreSQL")
def test_a_postgres_statement_over_the_statement_timeout_fails_and_the_pool_waits_bounded() -> None:
    engine = make_engine(os.environ["CALIPER_TEST_POSTGRES_URL"], statement_timeout_s=0.2, pool_timeout_s=0.3)
    try:
        started = time.monotonic()
        with engine.connect() as connection, pytest.raises(OperationalError, match="statement timeout"):
            connection.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 3
    finally:
        engine.dispose()


class FreezingProxy:
    """A TCP relay to PostgreSQL whose `frozen` flag stops relaying while every socket stays open: the far
    end still ACKs, so neither statement_timeout nor libpq's TCP checks can notice (issue 25's stalled path)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.frozen = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 0.05)
                if self.frozen.is_set():
                    continue
                for sender in ready:
                    try:
                        data = sender.recv(65536)
                    except ConnectionError:
                        return
                    if not data:
                        return
                    (upstream if sender is client else client).sendall(data)

    def url(self, database_url: str) -> str:
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def frozen_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FreezingProxy, str]]:
    url = os.environ["CALIPER_TEST_POSTGRES_URL"]
    parsed = make_url(url)
    proxy = FreezingProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    monkeypatch.setattr(db, "ANSWER_GRACE_S", 0.5)
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2)
    yield proxy, proxy.url(url)
    proxy.frozen.clear()
    proxy.close()


@pytest.mark.skipif("CALIPER_TEST_POSTGRES_URL" not in os.environ, reason="needs PostgreSQL")
def test_a_database_path_that_acks_but_never_answers_fails_the_query_and_the_pool_recovers(
    frozen_path: tuple[FreezingProxy, str],
) -> None:
    proxy, url = frozen_path
    engine = make_engine(url, statement_timeout_s=0.5, pool_timeout_s=0.5)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
        proxy.frozen.set()
        started = time.monotonic()
        refused = pytest.raises(OperationalError, match=r"did not answer within 1 s|connection timeout")
        with refused, engine.connect() as connection:  # the pool's ping meets the frozen path, then a reconnect
            connection.execute(text("SELECT 2"))
        assert time.monotonic() - started < 6  # the answer wait (1 s), then connect_timeout (2 s)
        proxy.frozen.clear()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 3")).scalar() == 3
    finally:
        engine.dispose()


@pytest.mark.skipif("CALIPER_TEST_POSTGRES_URL" not in os.environ, reason="needs PostgreSQL")
def test_reads_and_writes_answer_503_while_the_database_path_is_frozen(
    frozen_path: tuple[FreezingProxy, str], tmp_path: Path
) -> None:
    proxy, url = frozen_path
    settings = Settings(database_url=url, db_statement_timeout_s=0.5, db_pool_timeout_s=0.5, artifact_dir=tmp_path)
    upgrade(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False, base_url=LOCAL) as client:
        assert client.get("/v1/evaluations").status_code == 200
        proxy.frozen.set()
        for method, path, body in (("GET", "/v1/evaluations", None), ("POST", "/v1/evaluations", BODY)):
            started = time.monotonic()
            answer = client.request(method, path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] and time.monotonic() - started < 8
        proxy.frozen.clear()
        assert client.get("/v1/evaluations").status_code == 200


# -- slow clients, against a real server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    tmp_path: Path, *args: str, open_files: int | None = None, **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(
        CALIPER_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}", CALIPER_ARTIFACT_DIR=str(tmp_path / "a"),
        CALIPER_ACCESS_LOG="false", CALIPER_RATE_LIMIT="", **env,
    )  # fmt: skip
    subprocess.run([*CALIPER, "db", "upgrade"], env=environment, check=True, capture_output=True)
    port = free_port()

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    server = subprocess.Popen(
        [*CALIPER, "serve", "--port", str(port), *args], env=environment, preexec_fn=limit_files,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _status(url + "/readyz") == 200, 60, server)
    return server, url


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def wait_until(condition: object, seconds: float, server: subprocess.Popen[bytes]) -> None:
    deadline_at = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else "server exited"
        assert time.monotonic() < deadline_at, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def slow_client_server(tmp_path: Path) -> Iterator[str]:
    server, url = start_server(
        tmp_path, open_files=256, CALIPER_HEADER_TIMEOUT_S="1", CALIPER_BODY_TIMEOUT_S="1",
        CALIPER_BODY_MIN_BYTES_PER_S="1000000",
    )  # fmt: skip
    yield url
    server.terminate()
    server.wait(timeout=10)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_a_client_sending_headers_slowly_is_answered_408_and_dropped(slow_client_server: str) -> None:
    idle, trickling = _connect(slow_client_server), _connect(slow_client_server)
    trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    trickle_closed, trickle_answer = _closed_within(trickling, 5)
    idle_closed, idle_answer = _closed_within(idle, 5)
    assert trickle_closed and trickle_answer.startswith(b"HTTP/1.1 408")
    assert idle_closed and idle_answer == b""  # nothing sent: closed without an answer
    assert time.monotonic() - started < 5
    assert _status(slow_client_server + "/healthz") == 200
    metrics = httpx.get(slow_client_server + "/metrics").text
    assert 'caliper_refused_requests_total{reason="header-timeout"} 1.0' in metrics  # the idle one sent nothing


def test_a_client_sending_its_body_slowly_is_answered_408_and_dropped(slow_client_server: str) -> None:
    sock = _connect(slow_client_server)
    sock.sendall(
        b"POST /v1/evaluations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"logits": ['
    )
    closed, answer = _closed_within(sock, 6)
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer
    assert b"CALIPER_BODY_TIMEOUT_S" in answer and b"application/problem+json" in answer
    assert (
        'caliper_refused_requests_total{reason="body-timeout"} 1.0' in httpx.get(slow_client_server + "/metrics").text
    )


def test_requests_beyond_the_connection_cap_answer_503_and_are_counted(tmp_path: Path) -> None:
    """uvicorn answers them itself (the app never sees them); they are counted all the same (issue 25)."""
    server, url = start_server(tmp_path, CALIPER_MAX_CONNECTIONS="3", CALIPER_HEADER_TIMEOUT_S="30")
    try:
        held = [_connect(url) for _ in range(4)]  # all open before any request: beyond the cap
        answers = []
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answers.append(sock.recv(4096).split(b"\r\n", 1)[0])
        refused = answers.count(b"HTTP/1.1 503 Service Unavailable")
        assert refused >= 1 and answers.count(b"HTTP/1.1 200 OK") + refused == 4, answers
        for sock in held:
            sock.close()
        time.sleep(0.5)
        metrics = httpx.get(url + "/metrics").text
        assert f'caliper_refused_requests_total{{reason="connections"}} {refused}.0' in metrics, metrics[-1500:]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_client_beyond_its_connection_cap_gets_503_and_other_clients_do_not(tmp_path: Path) -> None:
    """One address's idle or trickling sockets cannot take the whole process's connections (issue 25)."""
    server, url = start_server(tmp_path, CALIPER_MAX_CONNECTIONS_PER_CLIENT="3", CALIPER_HEADER_TIMEOUT_S="30")
    try:
        held = [_connect(url) for _ in range(3)]
        extra = _connect(url)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable") and b"retry-after: 1" in answer.lower(), answer
        assert _closed_within(extra, 2)[0]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert other.recv(4096).startswith(b"HTTP/1.1 200 OK")
        held.pop().close()
        time.sleep(0.3)
        assert httpx.get(url + "/healthz").status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert 'caliper_refused_requests_total{reason="client-connections"} 1.0' in metrics, metrics[-1500:]
        for sock in held:
            sock.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_300_half_sent_requests_under_256_open_files_do_not_lock_out_normal_requests(
    slow_client_server: str,
) -> None:
    flood = []
    for _ in range(300):
        try:
            sock = _connect(slow_client_server)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            flood.append(sock)
        except OSError:
            break  # the backlog is full: the server is out of descriptors until the deadline frees them
    assert len(flood) >= 200
    time.sleep(2.5)  # past the 1 s header deadline (and asyncio's 1 s pause after an EMFILE)
    answers = [_status(slow_client_server + "/healthz") for _ in range(20)]
    assert answers == [200] * 20
    closed = sum(_closed_within(sock, 0.5)[0] for sock in flood[:50])
    assert closed == 50
    for sock in flood:
        sock.close()


# -- several processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def test_serve_with_two_workers_survives_a_killed_worker_and_sums_metrics(tmp_path: Path) -> None:
    server, url = start_server(tmp_path, "--workers", "2")
    try:
        workers = _children(server.pid)
        assert len(workers) >= 2, workers
        with httpx.Client(base_url=url, timeout=30) as http:
            created = [http.post("/v1/evaluations", json=BODY).status_code for _ in range(6)]
            assert created == [201] * 6
            os.kill(workers[0], signal.SIGKILL)
            answers = [http.get("/v1/evaluations", headers={"Connection": "close"}).status_code for _ in range(6)]
            assert answers == [200] * 6  # the other worker answers while the supervisor replaces the dead one
            wait_until(lambda: len(set(_children(server.pid)) - {workers[0]}) >= 2, 60, server)
            assert len(http.get("/v1/evaluations?limit=500").json()["items"]) == 6
            text_format = http.get("/metrics").text
        posts = [
            s.value
            for family in text_string_to_metric_families(text_format)
            for s in family.samples
            if s.name == "caliper_http_requests_total" and s.labels.get("method") == "POST"
        ]
        assert sum(posts) == 6  # summed over both processes (and the dead one's file), whichever answered
    finally:
        server.terminate()
        server.wait(timeout=20)

"""The `caliper` command: migrations, a real uvicorn server, and a clear failure for a missing provider."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from caliper_client import CaliperClient

from tests.conftest import Y_A, Z_A

CALIPER = [sys.executable, "-m", "app.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # A folder that does not exist yet, as ./var on a fresh clone.
    env.update(CALIPER_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'cli.db'}", **extra)
    return env


def test_db_upgrade_then_serve_a_real_uvicorn_server(tmp_path: Path) -> None:
    env = _env(tmp_path)
    subprocess.run([*CALIPER, "db", "upgrade"], env=env, check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [*CALIPER, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = CaliperClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.http.get("/readyz").status_code == 200:
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        result = client.evaluate(logits=Z_A, labels=Y_A, model="cli")
        np.testing.assert_allclose(result["losses"]["cross_entropy"], 0.9389701905189698, rtol=1e-12)
        assert client.list_evaluations(model="cli")["items"][0]["id"] == result["id"]
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is installed here")
def test_serve_fails_clearly_when_cuda_is_asked_for_and_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CALIPER, "serve"], env=_env(tmp_path, CALIPER_PROVIDER="cuda"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "CUDAExecutionProvider" in result.stderr and "onnxruntime-gpu" in result.stderr


def test_the_client_retries_a_503_after_its_retry_after_and_gives_up_after_its_retries() -> None:
    import httpx
    from caliper_client import CaliperError

    calls: list[float] = []

    def busy_twice(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        assert request.content and b"logits" in request.content  # the body is sent again, whole
        if len(calls) <= 2:
            return httpx.Response(503, headers={"Retry-After": "0.3"}, json={"status": 503, "detail": "busy"})
        return httpx.Response(201, json={"id": "e1"})

    client = CaliperClient("http://caliper.test", transport=httpx.MockTransport(busy_twice))
    assert client.evaluate(logits=Z_A, labels=Y_A)["id"] == "e1"
    assert len(calls) == 3 and calls[1] - calls[0] >= 0.3 and calls[2] - calls[1] >= 0.3

    calls.clear()
    always = CaliperClient(
        "http://caliper.test",
        retries=2,
        transport=httpx.MockTransport(
            lambda r: calls.append(0) or httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "down"})
        ),
    )
    with pytest.raises(CaliperError) as raised:
        always.evaluate(logits=Z_A, labels=Y_A)
    assert raised.value.status == 503 and len(calls) == 3  # the first try and two retries
    calls.clear()
    refused = CaliperClient(
        "http://caliper.test", transport=httpx.MockTransport(lambda r: calls.append(0) or httpx.Response(422, json={}))
    )
    with pytest.raises(CaliperError):
        refused.evaluate(logits=Z_A, labels=Y_A)
    assert len(calls) == 1  # a client error is never retried


def test_the_client_does_not_retry_what_cannot_succeed() -> None:
    """A 503 without Retry-After (an unmigrated database) is final; a refused connection fails at once and
    names the URL; a URL without a scheme is refused before anything is sent (issue 25)."""
    import httpx
    from caliper_client import CaliperError

    calls: list[int] = []
    unmigrated = CaliperClient(
        "http://caliper.test",
        transport=httpx.MockTransport(lambda r: calls.append(0) or httpx.Response(503, json={"detail": "migrate"})),
    )
    with pytest.raises(CaliperError) as raised:
        unmigrated.evaluate(logits=Z_A, labels=Y_A)
    assert raised.value.status == 503 and len(calls) == 1

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError, match=f"http://127.0.0.1:{port}"):
        CaliperClient(f"http://127.0.0.1:{port}").list_evaluations()
    assert time.monotonic() - started < 5

    for url in ("127.0.0.1:8000", "localhost", "ftp://example.org", "http://"):
        with pytest.raises(ValueError, match="http://HOST:PORT"):
            CaliperClient(url)

    unauthenticated = CaliperClient(
        "http://caliper.test", transport=httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "key"}))
    )
    with pytest.raises(CaliperError, match="CALIPER_API_KEY"):
        unauthenticated.list_evaluations()


def test_the_command_fails_fast_on_a_url_it_cannot_reach(tmp_path: Path) -> None:
    np.savez(tmp_path / "candidate.npz", logits=Z_A, labels=Y_A)
    for url, said in (("127.0.0.1:9", "http://HOST:PORT"), ("http://127.0.0.1:9", "http://127.0.0.1:9")):
        started = time.monotonic()
        result = subprocess.run(
            [*CALIPER, "evaluate", "--npz", str(tmp_path / "candidate.npz"), "--url", url],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert time.monotonic() - started < 15 and "Traceback" not in result.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "var").mkdir()
    sqlite3.connect(tmp_path / "var" / "cli.db").close()  # exists, answers, has no tables
    result = subprocess.run([*CALIPER, "serve", "--port", "9"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not migrated" in result.stderr and "caliper db upgrade" in result.stderr


def test_db_downgrade_needs_a_revision_and_a_confirmation(tmp_path: Path) -> None:
    env = _env(tmp_path)
    subprocess.run([*CALIPER, "db", "upgrade"], env=env, check=True, capture_output=True)
    database = tmp_path / "var" / "cli.db"

    def tables() -> int:
        with sqlite3.connect(database) as connection:
            return len(connection.execute("select name from sqlite_master where type = 'table'").fetchall())

    migrated = tables()
    for argv in (["db", "downgrade"], ["db", "downgrade", "base"]):
        result = subprocess.run([*CALIPER, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--yes" in result.stderr
        assert tables() == migrated
    subprocess.run([*CALIPER, "db", "downgrade", "base", "--yes"], env=env, check=True, capture_output=True)
    assert tables() < migrated

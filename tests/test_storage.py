"""Storage: migrations agree with the models, writes are all-or-nothing, outages answer 503 and the
service recovers when the database returns."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.storage import evaluations as evaluation_store
from app.storage.blobs import decode_array, encode_array
from app.storage.evaluations import EvaluationRepository
from app.storage.migrate import alembic_config, upgrade
from tests.conftest import LOCAL, Y_A, Z_A, count_rows

BODY = {"logits": Z_A.tolist(), "labels": Y_A.tolist()}


def test_models_and_migrations_agree(settings: Settings) -> None:
    command.check(alembic_config(settings))  # raises when autogenerate would emit operations


def test_migrations_downgrade_and_upgrade_cleanly(tmp_path: Any) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(settings)
    command.downgrade(alembic_config(settings), "base")
    upgrade(settings)
    command.check(alembic_config(settings))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_blob_round_trip_is_exact(dtype: type) -> None:
    array = (np.random.default_rng(0).normal(size=1000) * 100).astype(dtype)
    decoded = decode_array(encode_array(array), "test")
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_stored_arrays_pair_rows_with_the_request(client: TestClient) -> None:
    created = client.post("/v1/evaluations", json={**BODY, "losses": ["cross_entropy", "brier"]}).json()
    arrays = EvaluationRepository(client.app.state.resources.database).arrays(created["id"])  # type: ignore[attr-defined]
    assert set(arrays) == {"label", "prediction", "confidence", "loss.cross_entropy", "loss.brier"}
    np.testing.assert_array_equal(arrays["label"], Y_A)
    np.testing.assert_array_equal(arrays["prediction"], [0, 2, 1, 0])
    np.testing.assert_allclose(
        arrays["loss.cross_entropy"], [0.2413112967, 0.1096014645, 2.3063557122, 1.0986122887], rtol=1e-9
    )


def test_a_failure_mid_write_stores_nothing(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(array: np.ndarray) -> bytes:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(evaluation_store, "encode_array", explode)
    response = client.post("/v1/evaluations", json=BODY)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://postgres@127.0.0.1:9/none", "sqlite:////"],
    ids=["postgres-refused", "sqlite-unopenable"],
)
def test_database_down_is_503_and_the_process_keeps_serving(url: str) -> None:
    app = create_app(Settings(database_url=url))
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        for response in (
            client.post("/v1/evaluations", json=BODY),
            client.get("/v1/evaluations"),
            client.get("/readyz"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.json()["checks"]["database"]["status"] == "unavailable"
        assert "127.0.0.1" not in ready.text and "postgres@" not in ready.text and "none" not in ready.text
        assert client.get("/healthz").status_code == 200
        stateless = client.post("/v1/evaluations", json={**BODY, "store": False})
        assert stateless.status_code == 201  # computing needs no database


class TcpProxy:
    """A loopback TCP proxy that can cut and restore the path to the database."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.sockets: list[socket.socket] = []
        self.server: socket.socket | None = None

    def up(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def down(self) -> None:
        assert self.server is not None
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone would not
        self.server.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[TcpProxy, str]]:
    url = os.environ.get("CALIPER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("CALIPER_TEST_POSTGRES_URL is not set")
    from sqlalchemy.engine import make_url

    upgrade(Settings(database_url=url))
    parsed = make_url(url)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    proxy.up()
    yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.down()


def test_service_recovers_when_postgres_returns(proxied_postgres: tuple[TcpProxy, str]) -> None:
    proxy, url = proxied_postgres
    app = create_app(Settings(database_url=url))
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        before = client.post("/v1/evaluations", json=BODY)
        assert before.status_code == 201
        proxy.down()
        assert client.post("/v1/evaluations", json=BODY).status_code == 503
        assert client.get(f"/v1/evaluations/{before.json()['id']}").status_code == 503
        proxy.up()
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert client.get(f"/v1/evaluations/{before.json()['id']}").status_code == 200
        assert client.post("/v1/evaluations", json=BODY).status_code == 201


def test_readyz_reports_pending_migrations_per_dependency(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'new.db'}", artifact_dir=tmp_path / "a")
    upgrade(settings, "0009")
    with TestClient(create_app(settings), raise_server_exceptions=False, base_url=LOCAL) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "retry-after" not in ready.headers  # waiting will not migrate it
        database = ready.json()["checks"]["database"]
        assert database["status"] == "migrations-pending" and database["detail"]["at"] == ["0009"]
        assert "caliper db upgrade" in ready.json()["detail"] and "model_workers" in ready.json()["checks"]
        upgrade(settings)
        assert client.get("/readyz").status_code == 200

"""Fixtures: golden vectors from ../shared, and a service per database backend (SQLite always,
Postgres too when CALIPER_TEST_POSTGRES_URL is set, as .ci/run does)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from caliper_client import CaliperClient
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete

from app.api.main import create_app
from app.config import DEFAULT_PROJECT, Settings
from app.core import runtime
from app.storage.migrate import downgrade, upgrade
from app.storage.models import Base
from app.storage.tenancy import project_scope

SHARED = Path(os.environ.get("CALIPER_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "golden"

# Dataset A and B of losses_calibration.md §0.
Z_A = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]])
Y_A = np.array([0, 2, 0, 1])
ZT_A = np.array([[1.5, 1.0, -0.5], [0.0, 0.5, 2.0], [0.5, 1.0, 0.2], [2.0, 0.0, 1.0]])
Q_A = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2]])
W_A = [1.0, 2.0, 0.5]
Z_B = np.array(
    [
        [3.0, 0.0, 0.0],
        [2.0, 1.0, 0.0],
        [0.5, 0.4, 0.3],
        [0.0, 2.5, 0.5],
        [1.0, 1.2, 0.8],
        [-1.0, 0.0, 1.5],
        [0.2, 0.1, 2.2],
        [4.0, 0.5, 0.1],
        [0.3, 1.8, 1.7],
        [1.5, 1.5, 0.0],
    ]
)
Y_B = np.array([0, 1, 2, 1, 0, 2, 2, 0, 2, 0])


@pytest.fixture(scope="session", autouse=True)
def _core_threads() -> None:
    """The core's default session cache honours CALIPER_INTRA_OP_THREADS as the service does, so the whole
    suite can run with onnxruntime on 1 or 2 intra-op threads (.ci/run's narrowed pass)."""
    threads = int(os.environ.get("CALIPER_INTRA_OP_THREADS", "0"))
    runtime._default = runtime.SessionCache(runtime.RuntimeConfig(intra_op_threads=threads))


def load_golden(name: str) -> dict[str, Any]:
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: CI needs ../shared beside the clone")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _backends() -> list[str]:
    return ["sqlite", "postgres"] if os.environ.get("CALIPER_TEST_POSTGRES_URL") else ["sqlite"]


LOCAL = "http://localhost"  # test clients name a loopback Host: a keyless server answers no other (AllowedHosts)


@pytest.fixture(scope="session", params=_backends())
def settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'caliper.db'}"
    else:
        url = os.environ["CALIPER_TEST_POSTGRES_URL"]
    settings = Settings(
        database_url=url,
        chunk_size=7,
        max_body_bytes=8 * 1024 * 1024,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        max_model_bytes=1024 * 1024,
        model_workers=2,
        model_memory_bytes=2 * 1024**3,
        model_timeout_s=30.0,
        model_batch_rows=64,
        rate_limit="",  # the whole suite calls from one address within minutes; tests/test_limits.py sets its own
        data_roots=str(tmp_path_factory.getbasetemp()),  # the README's source example writes its files there
    )
    if request.param == "postgres":
        _reset_postgres(settings)
    upgrade(settings)
    return settings


def _reset_postgres(settings: Settings) -> None:
    """Downgrade the shared test database to nothing (which tests every migration's downgrade on Postgres);
    a schema left by a newer checkout, whose revision these scripts do not know, is dropped instead."""
    from alembic.util.exc import CommandError
    from sqlalchemy import create_engine, text

    try:
        downgrade(settings, "base")
    except CommandError:
        engine = create_engine(settings.database_url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


def files_app(folder: Path, root: Path, **options: Any) -> FastAPI:
    """An app on its own SQLite database under `folder` that reads `source` files under `root` (no rate
    limit), with further settings as `options`."""
    configured = Settings(
        database_url=f"sqlite:///{folder / 'caliper.db'}", artifact_dir=folder / "artifacts", data_roots=str(root),
        rate_limit="", **options,
    )  # fmt: skip
    upgrade(configured)
    return create_app(configured)


def clear_tables(app: FastAPI) -> None:
    """Every table emptied and every stored model file removed."""
    with app.state.resources.database.begin() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
    for path in app.state.resources.artifacts.root.glob("*"):
        path.unlink()


def count_rows(app: FastAPI) -> dict[str, int]:
    from sqlalchemy import func, select

    with app.state.resources.database() as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables}


def runtime_of(client: TestClient) -> runtime.SessionCache:
    """The app's onnxruntime sessions and chunking (tests change its chunking to compare chunked runs)."""
    cache: runtime.SessionCache = client.app.state.resources.runtime  # type: ignore[attr-defined]
    return cache


@pytest.fixture(autouse=True)
def default_project() -> Iterator[None]:
    """Tests that call services or repositories directly do so as the default project, as every request
    does with auth disabled (requests get theirs from the auth middleware, in the server's own context)."""
    with project_scope(DEFAULT_PROJECT):
        yield


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    clear_tables(app)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as test_client:
        yield test_client


@pytest.fixture
def caliper(client: TestClient) -> CaliperClient:
    return CaliperClient(client)


@pytest.fixture
def live_server(client: TestClient, app: FastAPI) -> Iterator[str]:
    """The suite's app (tables cleared by `client`) served by uvicorn on a free loopback port."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert instance.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(10)

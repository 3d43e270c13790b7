"""Engine and session factory; SQLite gets foreign keys and WAL, every engine pings before use so
that the service recovers by itself when the database comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.errors import _WaitTimeout
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.storage.tenancy import scope_to_projects


def ensure_sqlite_directory(url: str) -> None:
    """An embedded SQLite file's folder (./var by default) is created on first use."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def backend_name(url: str) -> str:
    """`sqlite`, `postgresql`, …: what /readyz may show of a database URL (no user, host or name)."""
    return make_url(url).get_backend_name()


def display_url(url: str) -> str:
    """The URL as messages may show it: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


# libpq's own TCP checks, so that a path to PostgreSQL that went silent fails a request instead of hanging it:
# keepalive probes on an idle connection, and a cap on how long sent data may stay unacknowledged.
TCP_LIVENESS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 10_000}  # fmt: skip
CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout (it takes whole seconds, at least 2)
ANSWER_GRACE_S = 5.0  # how much longer than statement_timeout a client waits for PostgreSQL's answer

T = TypeVar("T")


class AnsweringConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits at most `answer_timeout_s` for any answer, then closes itself.

    A path whose far end still ACKs TCP but never answers (a stopped proxy, a frozen VM) defeats both the
    server's statement_timeout and libpq's TCP checks, and libpq has no read timeout: without this a
    request's thread blocks until the database comes back. Closed, the connection is `broken` to
    SQLAlchemy, which drops it from the pool; the request answers 503 like any other outage."""

    answer_timeout_s: float = 35.0

    def wait(self, gen: PQGen[T], interval: float = 0.1, timeout: float | None = None) -> T:
        try:
            return super().wait(gen, interval=interval, timeout=self.answer_timeout_s if timeout is None else timeout)
        except _WaitTimeout:
            self.pgconn.finish()  # its state is unknown mid-protocol: never reuse it (as psycopg's own cancel does)
            raise psycopg.OperationalError(
                f"PostgreSQL did not answer within {self.answer_timeout_s:g} s; the connection was closed"
            ) from None


def make_engine(url: str, statement_timeout_s: float = 30.0, pool_timeout_s: float = 10.0) -> Engine:
    """A statement over `statement_timeout_s` fails on PostgreSQL (SQLite waits that long for a write
    lock), PostgreSQL's answer is awaited `ANSWER_GRACE_S` longer at most, and a request waits at most
    `pool_timeout_s` for a pooled connection: each answers 503 rather than holding the request behind a
    frozen database."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        ensure_sqlite_directory(url)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": statement_timeout_s}
    else:
        options = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
        kwargs.update(
            pool_size=5,
            max_overflow=10,
            pool_timeout=pool_timeout_s,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": options, **TCP_LIVENESS},
        )
    engine = create_engine(url, **kwargs)
    if engine.dialect.driver == "psycopg":
        answer_timeout_s = statement_timeout_s + ANSWER_GRACE_S

        @event.listens_for(engine, "do_connect")
        def _answering_connection(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> AnsweringConnection:
            connection = AnsweringConnection.connect(*cargs, **cparams)
            connection.answer_timeout_s = answer_timeout_s
            return connection

    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL's recommended level: durable across app crashes
            cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose ORM queries see only the project in scope (`app.storage.tenancy`)."""
    factory = sessionmaker(engine, expire_on_commit=False)
    scope_to_projects(factory)
    return factory

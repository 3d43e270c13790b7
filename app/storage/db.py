"""Engine and session factory; SQLite gets foreign keys and WAL, every engine pings before use so
that the service recovers by itself when the database comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def make_engine(url: str, statement_timeout_s: float = 30.0, pool_timeout_s: float = 10.0) -> Engine:
    """A statement over `statement_timeout_s` fails on PostgreSQL (SQLite waits that long for a write
    lock), and a request waits at most `pool_timeout_s` for a pooled connection: both answer 503
    rather than holding the request behind a frozen database."""
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
            connect_args={"connect_timeout": 5, "options": options, **TCP_LIVENESS},
        )
    engine = create_engine(url, **kwargs)
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

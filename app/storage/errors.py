"""What a database failure means for the caller, so that the layers above storage need not know
SQLAlchemy's exceptions: the database was never migrated (its tables are missing), it does not answer (a
refused connection, a dropped one, a pool or statement timeout), or something else went wrong."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeoutError)  # every failure of the database layer
DatabaseState = Literal["unmigrated", "unavailable"]


def database_state(exc: BaseException) -> DatabaseState | None:
    """Why the database could not serve (`exc` one of DATABASE_ERRORS): its tables are missing (SQLite's
    "no such table", PostgreSQL's undefined_table), or it does not answer; None for any other failure."""
    original = getattr(exc, "orig", None)
    if getattr(original, "sqlstate", None) == "42P01" or "no such table" in str(original):
        return "unmigrated"
    if isinstance(exc, OperationalError | PoolTimeoutError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return "unavailable"
    return None

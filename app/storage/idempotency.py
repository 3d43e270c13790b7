"""Idempotency keys: claim one before a POST runs, complete it with the answer, release it when the
answer was a server error (a retry may then run again). Claims older than the retention are removed
as new ones are made."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.records import utc_now
from app.storage.models import IdempotencyRecord
from app.storage.tenancy import ALL_PROJECTS


class IdempotencyRepository:
    def __init__(self, sessions: sessionmaker[Session], retention_s: float) -> None:
        self.sessions, self.retention = sessions, timedelta(seconds=retention_s)

    def claim(self, key: str, request: str) -> IdempotencyRecord | None:
        """None when this call claimed the key (run the request), else the existing claim or answer."""
        now = utc_now()
        with self.sessions.begin() as session:
            expired = delete(IdempotencyRecord).where(IdempotencyRecord.created_at < now - self.retention)
            session.execute(expired.execution_options(**ALL_PROJECTS))  # every project's, as they expire
        try:
            with self.sessions.begin() as session:
                session.add(IdempotencyRecord(key=key, created_at=now, request=request, state="pending"))
            return None
        except IntegrityError:
            with self.sessions() as session:  # the caller's project's claim (the project filter)
                existing = session.scalars(select(IdempotencyRecord).where(IdempotencyRecord.key == key)).first()
            if existing is None:  # expired and removed between the two statements: claim again
                return self.claim(key, request)
            return existing

    def complete(self, key: str, body_sha256: str, status: int, headers: list[list[str]], body: bytes) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.key == key)
                .values(state="done", body_sha256=body_sha256, status=status, headers=headers, body=body)
            )

    def release(self, key: str) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.key == key))

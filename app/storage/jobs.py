"""Jobs: their rows, moved from state to state by conditional UPDATEs, so a cancellation and a worker
finishing never both win. The beat and the sweep of stale jobs are the server's own housekeeping and see
every project (ALL_PROJECTS); everything else sees the caller's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.records import ConflictError, utc_now
from app.storage.models import JobRecord
from app.storage.repository import Repository
from app.storage.tenancy import ALL_PROJECTS

ACTIVE = ("queued", "running")


class JobRepository(Repository[JobRecord]):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions, JobRecord, "job")

    def _update(self, job_id: str, states: tuple[str, ...], **values: Any) -> bool:
        """Set `values` on the job if it is in one of `states`; whether it was."""
        query = update(JobRecord).where(JobRecord.id == job_id, JobRecord.state.in_(states)).values(**values)
        with self.sessions.begin() as session:
            return bool(session.execute(query).rowcount)  # type: ignore[attr-defined]

    def start(self, job_id: str) -> bool:
        """queued → running; False when it was cancelled first."""
        now = utc_now()
        return self._update(job_id, ("queued",), state="running", started_at=now, heartbeat_at=now)

    def report(self, job_id: str, done: int, total: int, unit: str) -> bool:
        """Write the progress of a running job and beat; whether a cancellation was asked for."""
        self._update(job_id, ("running",), done=done, total=total, unit=unit, heartbeat_at=utc_now())
        with self.sessions() as session:
            return bool(session.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == job_id)))

    def finish(self, job_id: str, state: str, **values: Any) -> bool:
        """running → succeeded, failed or cancelled, with the answer or the problem."""
        return self._update(job_id, ("running",), state=state, finished_at=utc_now(), **values)

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled at once; a running one is asked to stop (its worker stops at the next
        chunk and marks it cancelled); a cancelled one stays so. ConflictError for a job that finished."""
        asked = self._update(job_id, ("queued",), state="cancelled", finished_at=utc_now()) or self._update(
            job_id, ("running",), cancel_requested=True
        )
        record = self.get(job_id)
        if not asked and record.state != "cancelled":
            raise ConflictError(f"job {job_id!r} has already {record.state}; there is nothing to cancel")
        return record

    def beat(self, owner: str) -> None:
        """Mark every active job of this process as alive."""
        query = update(JobRecord).where(JobRecord.owner == owner, JobRecord.state.in_(ACTIVE))
        with self.sessions.begin() as session:
            session.execute(query.values(heartbeat_at=utc_now()).execution_options(**ALL_PROJECTS))

    def fail_stale(self, error: dict[str, Any], before: datetime | None = None, owner: str | None = None) -> int:
        """Fail every active job, of any project, whose process has not beaten since `before` (it died), or
        of `owner` (it is shutting down): nothing of a job is stored before it succeeds, so nothing is
        half-stored. How many."""
        query = update(JobRecord).where(JobRecord.state.in_(ACTIVE))
        if before is not None:
            query = query.where(JobRecord.heartbeat_at < before)
        if owner is not None:
            query = query.where(JobRecord.owner == owner)
        values = {"state": "failed", "finished_at": utc_now(), "error": error}
        with self.sessions.begin() as session:
            result = session.execute(query.values(**values).execution_options(**ALL_PROJECTS))
        return int(result.rowcount)  # type: ignore[attr-defined]

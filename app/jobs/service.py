"""Jobs run in this process: a thread pool (CALIPER_JOB_WORKERS) runs each job's use case — the same
call the synchronous route makes — in the caller's context (its project), under the job's own time limit,
cancellable at every chunk, its progress written to the job's row. The row is the job's truth, so any
server process answers GET /v1/jobs/{id}, and a DELETE reaches the job's process through it (the worker
reads `cancel_requested` each time it writes progress). Each process beats its active jobs; a job whose
process stopped beating (it died) is failed by the next sweep of any process, with a problem saying so —
jobs are not resumed: their use cases store nothing until they succeed, so nothing is half-stored, and
the client submits the job again."""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from app.core import deadline, progress
from app.jobs.schemas import JobOut, Progress
from app.records import new_id, rfc3339, utc_now
from app.storage.jobs import JobRepository
from app.storage.models import JobRecord
from app.stored import StoredResource

log = logging.getLogger("caliper.jobs")
ProblemOf = Callable[[BaseException], dict[str, Any]]
REPORT_EVERY_S = 0.5  # progress reaches the database at most this often per job
LOST = {
    "type": "https://caliper.dev/problems/job-lost",
    "title": "The job was lost",
    "status": 500,
    "detail": "the server process running this job stopped (it was restarted or died) before the job finished; "
    "nothing of it was stored: submit it again",
    "errors": [],
}


def job_out(record: JobRecord) -> JobOut:
    return JobOut(
        id=record.id,
        kind=record.kind,
        state=record.state,
        progress=Progress(done=record.done, total=record.total, unit=record.unit),
        created_at=rfc3339(record.created_at),
        started_at=rfc3339(record.started_at) if record.started_at else None,
        finished_at=rfc3339(record.finished_at) if record.finished_at else None,
        result=record.result,
        error=record.error,
    )


class _Reporter:
    """A job's progress: the largest pass over rows so far (or the first unit reported), written to the
    row at most every REPORT_EVERY_S; a cancellation asked through the row sets the job's event."""

    def __init__(self, jobs: JobRepository, job_id: str, cancelled: threading.Event) -> None:
        self.jobs, self.job_id, self.cancelled = jobs, job_id, cancelled
        self.kept: tuple[int, int, str] | None = None
        self.written = 0.0

    def __call__(self, done: int, total: int, unit: str) -> None:
        kept = self.kept
        if kept is not None and (unit != kept[2] or (total, done) <= (kept[1], kept[0])):
            return
        self.kept = (done, total, unit)
        now = time.monotonic()
        if now - self.written >= REPORT_EVERY_S:
            self.written = now
            if self.jobs.report(self.job_id, done, total, unit):
                self.cancelled.set()

    def final(self) -> dict[str, Any]:
        """The progress of a job that succeeded: its largest pass, complete."""
        if self.kept is None:
            return {}
        _, total, unit = self.kept
        return {"done": total, "total": total, "unit": unit}


class JobService(StoredResource[JobRecord, JobOut]):
    def __init__(
        self, repository: JobRepository, problem_of: ProblemOf, workers: int, timeout_s: float, stale_s: float
    ) -> None:
        """`problem_of` turns an exception into the problem the synchronous route would have answered."""
        super().__init__(repository, job_out)
        self.jobs, self.problem_of = repository, problem_of
        self.timeout_s, self.stale_s = timeout_s, stale_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workers = workers
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        self.cancelled: dict[str, threading.Event] = {}
        self.stopping = threading.Event()
        self.beating: threading.Thread | None = None

    def start(self) -> None:
        """Fail the jobs whose process died, then beat and sweep every fifth of CALIPER_JOB_STALE_S (until
        `close`; a closed service starts again). The server starts it; a first job does too."""
        with self.lock:
            if self.executor is not None:
                return
            self.stopping.clear()
            try:
                self._sweep()
            except Exception:  # e.g. the database is not migrated yet: the server says so; the beat sweeps later
                log.exception("could not sweep stale jobs at start-up")
            self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="caliper-job")
            self.beating = threading.Thread(target=self._beat, name="caliper-job-beat", daemon=True)
            self.beating.start()

    def _sweep(self) -> None:
        failed = self.jobs.fail_stale(LOST, before=utc_now() - timedelta(seconds=self.stale_s))
        if failed:
            log.warning("%d job(s) whose server process stopped were marked failed", failed)

    def _beat(self) -> None:
        while not self.stopping.wait(self.stale_s / 5):
            try:
                self.jobs.beat(self.owner)
                self._sweep()
            except Exception:  # the database may be down for a while; the next beat tries again
                log.exception("job heartbeat failed")

    def submit(self, kind: str, work: Callable[[], BaseModel]) -> JobOut:
        """Store the job as queued and hand `work` to the pool, in the caller's context (its project)."""
        now = utc_now()
        record = JobRecord(
            id=new_id(), created_at=now, kind=kind, state="queued", done=0, total=None, unit="rows",
            heartbeat_at=now, owner=self.owner, cancel_requested=False,
        )  # fmt: skip
        self.jobs.add(record)
        self.cancelled[record.id] = threading.Event()
        self.start()
        context = contextvars.copy_context()
        assert self.executor is not None
        self.executor.submit(context.run, self._run, record.id, work)
        return job_out(record)

    def _run(self, job_id: str, work: Callable[[], BaseModel]) -> None:
        cancelled = self.cancelled[job_id]
        try:
            if not self.jobs.start(job_id):
                return  # cancelled while queued
            reporter = _Reporter(self.jobs, job_id, cancelled)
            with deadline.time_limit(self.timeout_s), deadline.cancellable(cancelled), progress.reporting(reporter):
                answer = work()
            self.jobs.finish(job_id, "succeeded", result=answer.model_dump(mode="json"), **reporter.final())
        except deadline.CancelledError as exc:
            if self.stopping.is_set():  # the server is shutting down, not the client cancelling
                self.jobs.finish(job_id, "failed", error=LOST)
            else:
                self.jobs.finish(job_id, "cancelled", error=self.problem_of(exc))
        except BaseException as exc:
            self.jobs.finish(job_id, "failed", error=self.problem_of(exc))
        finally:
            self.cancelled.pop(job_id, None)

    def cancel(self, job_id: str) -> JobOut:
        record = self.jobs.cancel(job_id)
        event = self.cancelled.get(job_id)
        if event is not None:
            event.set()
        return job_out(record)

    def wait(self, job_id: str, timeout_s: float) -> JobOut:
        """The job once it has finished, or as it is after `timeout_s`."""
        until = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.state not in ("queued", "running") or time.monotonic() >= until:
                return job
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the running jobs at their next chunk and fail them and the queued ones (LOST)."""
        with self.lock:
            if self.executor is None:
                return
            self.stopping.set()
            for event in list(self.cancelled.values()):
                event.set()
            self.executor.shutdown(wait=True, cancel_futures=True)
            if self.beating is not None:
                self.beating.join()
            self.executor = self.beating = None
            self.cancelled.clear()  # those of jobs the shutdown dropped before they ran
        try:
            self.jobs.fail_stale(LOST, owner=self.owner)
        except Exception:  # the database is gone too: the next process's sweep fails them
            log.exception("could not mark this process's jobs failed")

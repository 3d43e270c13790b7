"""/v1/jobs: the background work of creating POSTs sent with `Prefer: respond-async`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import ResourcesDep
from app.api.problems import problems
from app.api.stored_routes import add_stored_routes
from app.jobs.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
CANCEL_WAIT_S = 2.0  # a DELETE waits this long for a running job to stop at its next chunk

add_stored_routes(
    router, lambda r: r.jobs, JobOut, name="Job", thing="job", things="jobs", id_param="job_id",
    filters={"kind": "kind", "state": "state"},
)  # fmt: skip


@router.delete(
    "/{job_id}",
    operation_id="cancelJob",
    response_model=JobOut,
    summary="Cancel a queued or running job (nothing of it is stored)",
    responses={
        **problems(404, 409, 503),
        202: {"model": JobOut, "description": "Asked to stop: the job stops at its next chunk; poll it."},
    },
)
async def cancel(job_id: str, resources: ResourcesDep) -> Response:
    """200 with the job cancelled, or 202 while a running job has not yet reached its next chunk; 409 for
    a job that has already finished."""
    jobs = resources.jobs
    await run_in_threadpool(jobs.cancel, job_id)
    job = await run_in_threadpool(jobs.wait, job_id, CANCEL_WAIT_S)
    status = 202 if job.state in ("queued", "running") else 200
    return Response(job.model_dump_json(), status_code=status, media_type="application/json")

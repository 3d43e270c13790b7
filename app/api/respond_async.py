"""Creating POSTs answer 201 with the resource, or, when the client sends `Prefer: respond-async`
(RFC 7240), 202 with a job (`Location: /v1/jobs/{id}`, `Preference-Applied: respond-async`) whose
`result` will be that same answer. The body is read and decoded first either way, so a malformed
request is refused at once; the work, and whatever it finds wrong, belong to the job."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.api.deps import off_loop, resources_of
from app.jobs.schemas import JobOut

JSON = "application/json"
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "`respond-async` (RFC 7240): run the work as a job and answer 202 with it at once; poll "
    "`GET /v1/jobs/{id}` (the `Location`) for its progress and, when it has succeeded, its `result`.",
}
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobOut, "description": "With `Prefer: respond-async`: the job, queued."}
}


def wants_async(request: Request) -> bool:
    """Whether the Prefer header asks for respond-async (tokens are case-insensitive, may carry values)."""
    preferences = ",".join(request.headers.getlist("prefer")).lower()
    return any(p.split(";")[0].split("=")[0].strip() == "respond-async" for p in preferences.split(","))


async def created(
    request: Request, kind: str, call: Callable[..., BaseModel], *args: Any, inline: bool = False
) -> Response:
    """201 with `call(*args)`'s answer, or 202 with a job running it (`kind`: what it creates)."""
    if wants_async(request):
        jobs = resources_of(request).jobs
        job = await run_in_threadpool(jobs.submit, kind, partial(call, *args))
        headers = {"Location": f"/v1/jobs/{job.id}", "Preference-Applied": "respond-async"}
        return Response(job.model_dump_json(), status_code=202, media_type=JSON, headers=headers)
    answer = await off_loop(inline, call, *args)
    return Response(answer.model_dump_json(), status_code=201, media_type=JSON)


def with_prefer(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A creating route's `openapi_extra` with the Prefer header parameter added."""
    extra = dict(extra or {})
    extra["parameters"] = [*extra.get("parameters", []), PREFER]
    return extra

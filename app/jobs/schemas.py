"""What the API answers for a job (api.md, "Jobs, data sources and scale-out")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Progress(BaseModel):
    done: int = Field(description="Units done of the job's largest pass over its rows so far.")
    total: int | None = Field(description="Units of that pass; null before the first chunk.")
    unit: str = Field(description="`rows` (a pass over rows: evaluations, fits, model runs) or `resamples` (a gate).")


class JobOut(BaseModel):
    id: str
    kind: str = Field(
        description="What the job creates: evaluation, model_evaluation, calibrator, detector, sdm, conformal, "
        "estimate, gate, pipeline."
    )
    state: State
    progress: Progress
    created_at: str = Field(description="RFC 3339 UTC.")
    started_at: str | None
    finished_at: str | None
    result: dict[str, Any] | None = Field(
        description="When succeeded: exactly what the synchronous call answers (its 201 body)."
    )
    error: dict[str, Any] | None = Field(
        description="When failed or cancelled: an RFC 9457 problem, as the synchronous call would have answered."
    )

"""Request and response bodies of /v1/gates (api.md, "Gates")."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.examples import EXAMPLE_ID, examples
from app.gating.rules import Op, Severity


class BaselineSelector(BaseModel):
    """The newest evaluation matching every given field; `tag` is `key:value`, or a bare key (any value)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    dataset: str | None = None
    tag: str | None = None

    @model_validator(mode="after")
    def _something(self) -> BaselineSelector:
        if self.model is None and self.dataset is None and self.tag is None:
            raise ValueError("a baseline selector needs at least one of model, dataset, tag")
        return self


MAX_RULES = 200


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="A loss or metric key of the evaluations (losses win a name clash).")
    op: Op
    value: float = Field(allow_inf_nan=False)
    severity: Severity = "fail"
    slice: Annotated[dict[str, str], Field(min_length=1, max_length=1)] | None = Field(
        None,
        description='{"<key>": "<value>"}: judge the metric on that group of both evaluations\' slices (the '
        "bootstrap resamples that group's rows); 422 when either evaluation lacks it.",
    )


class GateRequest(BaseModel):
    """Compare a candidate evaluation with a baseline. With `significance`, changes are judged by a
    bootstrap interval of candidate − baseline: paired (rows resampled jointly) when both evaluations
    have the same dataset fingerprint, unpaired otherwise; tolerance rules fail only if the whole
    interval lies beyond the tolerance, improvement rules pass only if the whole interval shows it."""

    model_config = examples(
        {
            "candidate": EXAMPLE_ID,
            "baseline": {"model": "resnet50", "tag": "prod"},
            "significance": 0.95,
            "rules": [
                {"metric": "ece", "op": "max_increase_abs", "value": 0.01, "severity": "fail"},
                {"metric": "accuracy", "op": "max_decrease_abs", "value": 0.005, "severity": "warn"},
            ],
        }
    )

    candidate: str = Field(description="Evaluation id.")
    baseline: str | BaselineSelector
    rules: Annotated[list[Rule], Field(min_length=1, max_length=MAX_RULES)]
    significance: float | None = Field(None, gt=0, lt=1, description="Interval level, e.g. 0.95.")
    resamples: int = Field(2000, ge=100, le=100_000)
    seed: int = Field(0, ge=0)


class RuleResult(BaseModel):
    metric: str
    slice: dict[str, str] | None = None
    op: Op
    value: float
    severity: Severity
    candidate: float | None
    baseline: float | None
    delta: float | None
    interval: list[float | None] | None = Field(
        None,
        description="Bootstrap interval of candidate − baseline (null without significance or resamplable rows; "
        "an end is null where the metric itself is not finite, e.g. an NLL that overflowed).",
    )
    passed: bool
    reason: str


class GateOut(BaseModel):
    id: str
    created_at: str
    verdict: str = Field(description="pass | warn | fail")
    candidate: str
    baseline: str
    bootstrap: str | None = Field(None, description="paired | unpaired, when significance was asked for.")
    rules: list[RuleResult]
    request: dict[str, Any]

"""Request and response bodies of /v1/ood (api.md, "Detectors")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.logit_scores import SCORES, ScoreSpec
from app.core.ood_metrics import PrIntegral
from app.core.specs import TermSpec
from app.evaluation.schemas import Tensor

SCORE_TENSORS = ("logits",)
EVALUATE_TENSORS = ("scores_in", "scores_out")


def default_methods() -> list[TermSpec]:
    return [spec(name=name) for name, spec in SCORES.items()]


class ScoresRequest(BaseModel):
    """Logit-based OOD scores; every score is higher for more out-of-distribution inputs."""

    model_config = ConfigDict(extra="forbid")

    logits: Tensor = Field(None, description="[N, C] logits.")
    methods: list[ScoreSpec] = Field(
        default_factory=default_methods,
        description='Names or {"name", params}: msp, max_logit, energy (temperature 1), entropy, gen (gamma 0.1, '
        "m = min(100, C)).",
    )

    @field_validator("methods", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


class ScoresOut(BaseModel):
    scores: dict[str, list[float]]


class OodEvaluateRequest(BaseModel):
    """Separation of in- and out-of-distribution scores (higher = more OOD). Every distinct score is a
    threshold (no dropped ROC points) and ties count against the detector (mahalanobis.md §5)."""

    model_config = ConfigDict(extra="forbid")

    scores_in: Tensor = Field(None, description="[N_in] scores of in-distribution samples.")
    scores_out: Tensor = Field(None, description="[N_out] scores of out-of-distribution samples.")
    aupr: PrIntegral = Field("average_precision", description="average_precision (step) or trapezoid.")


class OodEvaluateOut(BaseModel):
    auroc: float = Field(description="OOD positive; the same number either way.")
    aupr_in: float
    aupr_out: float
    fpr_at_95_tpr: float = Field(description="Share of OOD accepted at the threshold keeping ≥ 95% of ID.")
    fpr_at_95_tpr_ood_positive: float = Field(description="Share of ID rejected when ≥ 95% of OOD is caught.")
    detection_error: float
    n_in: int
    n_out: int
    aupr_integral: str

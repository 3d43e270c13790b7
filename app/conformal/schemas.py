"""Request and response bodies of /v1/conformal (api.md, "Guarantees")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app.examples import examples
from app.records import Labels, RecordOut
from app.tensors import MODEL_INPUTS_NOTE, Tensor, known_source, source_field

FIT_TENSORS = ("logits", "probabilities", "labels", "inputs.*")
PREDICT_TENSORS = ("logits", "probabilities", "labels")
INTEGER_TENSORS = frozenset({"labels"})
SOURCE_FIELDS = ("logits", "probabilities", "labels")


class ConformalParams(BaseModel):
    """α and the options of the score (api.md's names)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    alpha: float = Field(0.1, gt=0, lt=1, allow_inf_nan=False, description="Miscoverage: sets cover ≥ 1 − α.")
    mondrian: bool = Field(False, description="Class-conditional: one q̂_c per class, over its own calibration rows.")
    lam: float = Field(
        0.01, ge=0, allow_inf_nan=False, alias="lambda", description="raps: λ, the penalty per rank beyond k_reg."
    )
    k_reg: StrictInt = Field(1, ge=0, description="raps: ranks up to k_reg are not penalised.")


class ConformalRequest(Labels):
    """Fit a split conformal predictor on calibration rows exchangeable with the rows it will be applied
    to: the sets then hold the true label with probability ≥ 1 − α (marginally; per class with
    `mondrian`). Scores (higher = less conforming) from p = the calibrated probabilities with
    `calibrator_id`, else softmax(logits), or the given probabilities; classes ranked by (−p_j, j), o(y) the
    rank of y: lac 1 − p_y; aps Σ_{rank ≤ o(y)} p_j (non-randomised); raps aps + λ·max(0, o(y) − k_reg);
    top_k o(y). q̂ = the k-th smallest calibration score, k = ⌈(n + 1)(1 − α)⌉, +∞ when k > n."""

    model_config = examples(
        {
            "method": "aps",
            "logits": [[3.0, 0.5, 0.1], [0.2, 2.5, 0.3], [0.1, 0.4, 2.0], [1.5, 1.2, 0.1], [0.3, 0.2, 2.4],
                       [2.2, 0.1, 0.9], [0.5, 2.8, 0.1], [0.9, 0.3, 1.1], [2.0, 1.9, 0.2], [0.1, 1.0, 1.2]],
            "labels": [0, 1, 2, 1, 2, 0, 1, 2, 0, 2],
            "params": {"alpha": 0.2},
            "model": "resnet50",
        }
    )  # fmt: skip

    method: Literal["lac", "aps", "raps", "top_k"]
    logits: Tensor | None = Field(None, description="[N, C] calibration logits.")
    probabilities: Tensor | None = Field(None, description="[N, C] calibration probabilities (each row sums to 1).")
    labels: Tensor | None = Field(None, description="[N] integer labels in [0, C).")
    calibrator_id: str | None = Field(
        None, description="Rank the calibrator's probabilities of `logits` (it is kept with the predictor)."
    )
    params: ConformalParams = Field(default_factory=ConformalParams)
    model_id: str | None = Field(None, description="Fit from this uploaded model's logits of `inputs`.")
    inputs: dict[str, Tensor] | None = Field(
        None, description=f"With `model_id`: the model's inputs, by input name. {MODEL_INPUTS_NOTE}"
    )
    source: dict[str, StrictStr] | None = source_field(
        SOURCE_FIELDS, "The fit holds its rows: the files are read whole, at most CALIPER_MAX_SOURCE_BYTES."
    )

    _known_source = known_source(SOURCE_FIELDS)


class ConformalFitReport(BaseModel):
    coverage: float = Field(description="Share of the calibration rows whose set holds their label.")
    mean_set_size: float = Field(description="Mean set size over the calibration rows.")


class ConformalOut(RecordOut):
    method: str
    params: ConformalParams
    n_calibration: int
    classes: int
    quantile: float | None = Field(description="q̂; null when +∞ (k > n) or under mondrian.")
    infinite: bool = Field(description="q̂ = +∞, or under mondrian some q̂_c = +∞ (those sets hold every class).")
    class_quantiles: list[float | None] | None = Field(description="Under mondrian: q̂_c per class, null for +∞.")
    calibrator_id: str | None
    fit_report: ConformalFitReport
    model: str | None
    dataset: str | None
    tags: dict[str, str]


class ConformalPredictRequest(BaseModel):
    model_config = examples({"logits": [[2.0, 0.5, -1.0], [0.3, 0.2, 0.1]], "labels": [0, 2]})

    logits: Tensor | None = Field(None, description="[N, C] logits (through the stored calibrator, if any).")
    probabilities: Tensor | None = Field(None, description="[N, C] probabilities, used as they are.")
    labels: Tensor | None = Field(None, description="[N] labels: adds the coverage fields.")


class ConformalPredictOut(BaseModel):
    sets: list[list[int]] = Field(description="Each row's set: class indices, ascending (may be empty).")
    set_size: list[int]
    coverage: float | None = Field(None, description="With labels: share of rows whose set holds their label.")
    mean_set_size: float | None = Field(None, description="With labels: the mean set size.")
    class_coverage: list[float | None] | None = Field(
        None, description="With labels: coverage per class, null for a class without rows."
    )
    size_stratified_coverage: dict[str, float] | None = Field(
        None, description="With labels: {set size: coverage} over the set sizes that occur."
    )

"""Request and response bodies of /v1/calibrators (api.md, "Calibrators")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from app.core.calibration.registry import METHODS
from app.core.fitted_state import STATE_VERSION
from app.examples import examples
from app.records import Labels, RecordOut
from app.tensors import MODEL_INPUTS_NOTE, NULL_NOTE, Tensor, known_source, source_field

if TYPE_CHECKING:
    MethodName = str
else:
    MethodName = Literal[tuple(METHODS)]
FIT_TENSORS = ("logits", "labels", "validation.logits", "validation.labels", "inputs.*", "validation.inputs.*")
INTEGER_TENSORS = frozenset({"labels", "validation.labels"})
SOURCE_FIELDS = ("logits", "labels", "validation.logits", "validation.labels")


class Split(BaseModel):
    model_config = ConfigDict(extra="forbid")

    logits: Tensor | None = Field(None, description="[N, C] logits.")
    labels: Tensor | None = Field(None, description="[N] integer labels.")
    inputs: dict[str, Tensor] | None = Field(
        None,
        description=f"With `model_id`: the model's inputs for this split. {MODEL_INPUTS_NOTE}",
    )


class CalibratorRequest(Labels):
    """Fit a calibrator on (logits, labels). Binary methods (platt, beta) calibrate p_1 when C = 2 and the
    top-label confidence otherwise (the other classes then share 1 − s′ in proportion). Isotonic and
    histogram binning are one-vs-rest, rows renormalised (a row mapped to all zeros becomes uniform).
    Histogram bins use numpy linspace edges, [e_k, e_{k+1}) with the last bin closed."""

    model_config = examples(
        {
            "method": "temperature",
            "logits": [[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.5, 0.4, 0.3], [0.0, 2.5, 0.5], [1.0, 1.2, 0.8],
                       [-1.0, 0.0, 1.5], [0.2, 0.1, 2.2], [4.0, 0.5, 0.1], [0.3, 1.8, 1.7], [1.5, 1.5, 0.0]],
            "labels": [0, 1, 2, 1, 0, 2, 2, 0, 2, 0],
            "cv": 2,
            "model": "resnet50@abc123",
        }
    )  # fmt: skip

    method: MethodName
    logits: Tensor | None = Field(
        None,
        description="[N, C] logits; for temperature_ca also [N, V, C] views (view 0 the original): the fit then "
        "adds a per-row temperature T·exp(s·(1 − a)), a = share of views whose argmax agrees with view 0, "
        "and apply/export take views too.",
    )
    labels: Tensor | None = Field(None, description="[N] integer labels in [0, C).")
    params: dict[str, Any] = Field(default_factory=dict, description="Hyper-parameters of the method.")
    validation: Split | None = Field(None, description="Held-out split reported before/after, not fitted on.")
    cv: int | None = Field(None, ge=2, le=20, description="k-fold cross-validation of the fit (pooled out-of-fold).")
    model_id: str | None = Field(None, description="Fit from this uploaded model's outputs on `inputs`.")
    inputs: dict[str, Tensor] | None = Field(
        None,
        description=f"With `model_id`: the model's inputs, by input name. {MODEL_INPUTS_NOTE}",
    )
    source: dict[str, StrictStr] | None = source_field(
        SOURCE_FIELDS,
        "The fit holds its rows: the files are read whole, at most CALIPER_MAX_SOURCE_BYTES. `logits` and "
        "`labels` have the same rows, as have the two `validation` fields.",
    )

    _known_source = known_source(SOURCE_FIELDS)


class CalibratorOut(RecordOut):
    method: str
    classes: int
    params: dict[str, Any]
    fitted: dict[str, Any] = Field(description="Learned parameters under api.md's stable names.")
    fit_report: dict[str, Any] = Field(
        description="before/after NLL, ECE and Brier on the fit data; `validation` and `cv` alike when asked; "
        "`reliability`: {fit, validation?, cv?} each {before, after}, 15 uniform bins as an evaluation's; "
        "`fit_info`: iterations, final gradient, whether a bound was hit."
    )
    model: str | None
    dataset: str | None
    tags: dict[str, str]

    @field_validator("fitted")
    @classmethod
    def _learned_only(cls, fitted: dict[str, Any]) -> dict[str, Any]:
        """The learned parameters only: the stored state's version is the service's business."""
        return {k: v for k, v in fitted.items() if k != STATE_VERSION}


class ApplyRequest(BaseModel):
    model_config = examples({"logits": [[2.0, 0.5, -1.0]]})

    logits: Tensor | None = Field(None, description="[N, C] logits, C as at fit time.")


class ApplyOut(BaseModel):
    probabilities: list[list[float | None]] | list[float | None] = Field(
        description=f"[N, C] calibrated probabilities, or [N] probabilities of class 1 for binary [N] logits; "
        f"{NULL_NOTE} (e.g. logits near the float limit divided by a temperature below 1)."
    )

"""Request and response bodies of /v1/estimates (api.md, "Guarantees")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from app.examples import examples
from app.records import Labels, RecordOut
from app.tensors import MODEL_INPUTS_NOTE, Tensor, known_source, source_field

Method = Literal["cbpe", "atc", "doc"]
NEEDS_REFERENCE = ("atc", "doc")
TENSORS = (
    "logits", "probabilities", "reference.logits", "reference.probabilities", "reference.labels", "inputs.*",
    "reference.inputs.*",
)  # fmt: skip
INTEGER_TENSORS = frozenset({"reference.labels"})
SOURCE_FIELDS = ("logits", "probabilities", "reference.logits", "reference.probabilities", "reference.labels")


class ReferenceIn(BaseModel):
    """Labelled rows from the training distribution, through the same calibrator."""

    model_config = ConfigDict(extra="forbid")

    logits: Tensor | None = Field(None, description="[M, C] logits.")
    probabilities: Tensor | None = Field(None, description="[M, C] probabilities.")
    labels: Tensor | None = Field(None, description="[M] integer labels in [0, C).")
    inputs: dict[str, Tensor] | None = Field(
        None, description=f"With `model_id`: the model's inputs. {MODEL_INPUTS_NOTE}"
    )


class EstimateRequest(Labels):
    """Estimate the accuracy of unlabelled rows from their confidences c = max_j p_j (p: the calibrated
    probabilities with `calibrator_id`, else softmax(logits), or the given probabilities). cbpe = mean c;
    atc = the share of rows with c > t, t the e-th smallest reference confidence where e reference rows are
    misclassified (Garg et al. 2022); doc = reference accuracy − (mean reference c − mean c) (Guillory et al.
    2021). atc and doc need a labelled `reference`."""

    model_config = examples(
        {
            "logits": [[2.0, 0.1, -1.0], [0.3, 1.9, 0.2], [0.5, 0.4, 0.45], [-1.0, 0.2, 2.2]],
            "reference": {
                "logits": [[2.5, 0.1, 0.0], [0.2, 2.1, 0.1], [0.1, 0.2, 1.8], [1.0, 1.1, 0.2], [0.3, 0.1, 1.2]],
                "labels": [0, 1, 2, 0, 2],
            },
            "model": "resnet50",
            "dataset": "traffic-2026-12-07",
        }
    )

    logits: Tensor | None = Field(None, description="[N, C] logits of the unlabelled rows.")
    probabilities: Tensor | None = Field(None, description="[N, C] probabilities of the unlabelled rows.")
    calibrator_id: str | None = Field(None, description="Confidences of this calibrator's probabilities of `logits`.")
    reference: ReferenceIn | None = Field(None, description="Labelled reference rows (needed by atc and doc).")
    methods: list[Method] | None = Field(
        None, description='Default ["cbpe"], plus "atc" and "doc" when a reference is given.', min_length=1
    )
    model_id: str | None = Field(None, description="Estimate this uploaded model's accuracy on `inputs`.")
    inputs: dict[str, Tensor] | None = Field(
        None, description=f"With `model_id`: the model's inputs (and `reference.inputs`). {MODEL_INPUTS_NOTE}"
    )
    source: dict[str, StrictStr] | None = source_field(
        SOURCE_FIELDS, "The rows are read whole, at most CALIPER_MAX_SOURCE_BYTES."
    )

    _known_source = known_source(SOURCE_FIELDS)


class ReferenceOut(BaseModel):
    n: int
    accuracy: float
    mean_confidence: float
    atc_threshold: float | None = Field(description="t; null when no reference row is misclassified (t = −∞).")


class EstimateOut(RecordOut):
    n: int
    estimates: dict[str, float | None] = Field(description="accuracy_cbpe, accuracy_atc, accuracy_doc: those asked.")
    mean_confidence: float
    reference: ReferenceOut | None
    calibrator_id: str | None
    model_id: str | None
    model: str | None
    dataset: str | None
    tags: dict[str, str]

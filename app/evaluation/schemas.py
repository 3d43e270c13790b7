"""Request and response bodies of /v1/evaluations (api.md, "Evaluations")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    StrictStr,
    field_validator,
    model_serializer,
)

from app.core.losses import LOSSES, LossSpec
from app.core.metrics import METRICS, MetricSpec
from app.core.specs import named, names_or_specs
from app.examples import DIGIT_ROW, examples
from app.records import Labels
from app.tensors import MODEL_INPUTS_NOTE, Tensor, known_source, source_field

TENSOR_FIELDS = (
    "logits", "probabilities", "labels", "targets", "teacher_logits", "sample_weight", "embeddings", "cosines",
    "class_weights", "label_sets.indices", "label_sets.offsets", "label_frequencies", "bags", "bag_targets",
)  # fmt: skip
SOURCE_FIELDS = ("logits", "probabilities", "labels", "targets", "teacher_logits", "sample_weight")
INTEGER_FIELDS = frozenset({"labels", "label_sets.indices", "label_sets.offsets", "bags"})
SLICE_PARTS = ("slices.*",)
MetricOut = (
    float | list[float | None] | list[list[float | None]] | None
)  # per class ("none"), C × C  # multipart only: in JSON, slices are lists of integers or strings, not tensors


class EvaluationRequest(Labels):
    """Predictions (logits or probabilities) with labels (or soft targets), and what to compute.

    Conventions: argmax ties go to the lowest class index; AURC sorts by (−confidence, row index);
    `sample_weight` weights every mean (a loss with class weights also weights its denominator, as torch
    does). Nested JSON lists are float64 (integers for `labels`); base64 tensor objects keep their dtype,
    and float32 input is computed in float32 with float64 accumulation.
    """

    model_config = examples(
        {
            "logits": [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]],
            "labels": [0, 2, 0, 1],
            "losses": ["cross_entropy", {"name": "focal", "gamma": 2.0, "key": "focal_g2"}],
            "metrics": ["accuracy", "nll", "brier", {"name": "ece", "bins": 15}, "mce"],
            "model": "resnet50@abc123",
            "dataset": "cifar10-test",
            "tags": {"git_sha": "abc123"},
        }
    )

    logits: Tensor | None = Field(None, description="[N, C] logits (give this or `probabilities`).")
    probabilities: Tensor | None = Field(None, description="[N, C] probabilities, rows summing to 1.")
    labels: Tensor | None = Field(None, description="[N] integer labels in [0, C) (or give `targets`).")
    targets: Tensor | None = Field(None, description="[N, C] soft targets, rows summing to 1.")
    teacher_logits: Tensor | None = Field(None, description="[N, C] teacher logits for `kd` and `nkd`.")
    sample_weight: Tensor | None = Field(None, description="[N] non-negative row weights.")
    losses: list[LossSpec] | None = Field(
        None,
        description='Names or {"name", "key"?, params}; omitted: ["cross_entropy"]; [] for none.',
        json_schema_extra=names_or_specs(LOSSES),
    )
    metrics: list[MetricSpec] | None = Field(
        None,
        description='Names or {"name", "key"?, params}; omitted: ["accuracy", "nll", "brier", "ece", "mce"] plus '
        '"top_k_accuracy" when C > 5.',
        json_schema_extra=names_or_specs(METRICS),
    )
    reliability_bins: int = Field(
        15,
        ge=1,
        le=10_000,
        description="Uniform bins of the reliability table (the first uniform `ece`'s bins when one is requested).",
    )
    per_sample: bool = Field(False, description="Return per-row loss values too.")
    store: bool = Field(True, description="false: compute and answer without writing (the response id is null).")
    calibrator_id: str | None = Field(
        None, description="Evaluate the probabilities of this stored calibrator applied to `logits`."
    )
    sdm_id: str | None = Field(
        None,
        description="Also score `embeddings` and the raw `logits` with this SDM estimator and report, as metrics, "
        "sdm_hr_coverage, sdm_hr_accuracy, sdm_non_hr_accuracy, their sdm_hr_lower_* counterparts and "
        "sdm_ood_share (accuracy of an empty side: null). Needs `logits` and `labels`.",
    )
    embeddings: Tensor | None = Field(
        None, description="[N, M] exemplar vectors for `sdm_id`; or, with `class_weights`, [N, D] embeddings."
    )
    cosines: Tensor | None = Field(
        None,
        description="[N, C] cosines (each in [−1, 1]) in place of `logits`, for the cosine-margin losses normface, "
        "cosface and arcface; metrics use them as logits.",
    )
    class_weights: Tensor | None = Field(
        None,
        description="[C, D] class weights: with `embeddings` [N, D], the cosines are those of the L2-normalised rows "
        "(in place of `cosines`).",
    )
    conformal_id: str | None = Field(
        None,
        description="Also report the sets of this conformal predictor on the rows, as metrics conformal_coverage (the "
        "share of rows whose set holds the label; higher is better) and conformal_mean_set_size (lower is better), "
        "unweighted. Needs the raw `logits` (or `probabilities`) and `labels`.",
    )
    slices: dict[str, list[StrictInt | StrictStr]] | None = Field(
        None,
        description="Per key, one group value per row (integers or strings, no nulls; multipart: a "
        "`slices.<key>` .npy part of integers instead): every loss and metric is also computed on each group, "
        "keeping the evaluation's C classes. At most 1,000 distinct values per key.",
    )
    source: dict[str, StrictStr] | None = source_field(
        SOURCE_FIELDS, "Read chunk by chunk: the predictions are never held whole."
    )
    min_slice_rows: int = Field(
        1, ge=1, description='A group of fewer rows is answered as {"n": k} alone (no losses or metrics).'
    )
    task: Literal["multiclass", "multilabel"] = Field(
        "multiclass",
        description="multilabel: `logits` [N, C] are per-label scores and the truth is multi-hot `targets` or "
        '`label_sets`; defaults then losses ["bce"], metrics ["precision_at_k", "ndcg_at_k", "hamming_loss", '
        '"multilabel_ece"]; the reliability table is that of each row\'s top-ranked label (its sigmoid against '
        "whether it is true).",
    )
    label_sets: list[list[StrictInt]] | None = Field(
        None,
        description="multilabel: each row's true label indices (any order, none twice; a row needs one for the "
        "ranking metrics and the softmax losses). Multipart: CSR parts `label_sets.indices` [nnz] and "
        "`label_sets.offsets` [N + 1] (offsets[0] = 0, non-decreasing, ending at nnz).",
    )
    label_frequencies: Tensor | None = Field(
        None, description="multilabel: [C] training counts N_l of each label, for psp_at_k and psndcg_at_k."
    )
    n_train: int | None = Field(
        None, ge=1, description="multilabel: the number of training rows, for psp_at_k and psndcg_at_k."
    )

    bags: Tensor | None = Field(
        None,
        description="[N] integer bag ids, with `bag_targets`, for the bag-level losses bag_level_ce and "
        "instance_level_ce; labels are then optional (without labels or targets, each row's soft target is its "
        "bag's distribution, which the metrics read).",
    )
    bag_targets: Tensor | None = Field(
        None, description="[B, C] each bag's label distribution (rows summing to 1); `bags` index its rows."
    )

    _normalise_losses = field_validator("losses", "metrics", mode="before")(named)

    @field_validator("label_sets", mode="before")
    @classmethod
    def _parts_taken(cls, value: Any) -> Any:
        """`{"indices", "offsets"}` tensors in JSON were taken out as the parts they are: nothing is left."""
        return None if value == {} else value

    _known_source = known_source(SOURCE_FIELDS)


class ReliabilityBinOut(BaseModel):
    lower: float
    upper: float
    count: float = Field(description="Rows in the bin (sum of sample weights).")
    confidence: float | None = Field(description="Mean confidence; null for an empty bin.")
    accuracy: float | None


class Reliability(BaseModel):
    bins: list[ReliabilityBinOut]


class SliceOut(BaseModel):
    """One group of a slice: its rows, and (when it has at least `min_slice_rows`) its losses and metrics."""

    n: int
    losses: dict[str, float | None] | None = Field(None, description="Absent below `min_slice_rows`.")
    metrics: dict[str, MetricOut] | None = Field(None, description="Absent below `min_slice_rows`.")
    reliability: list[ReliabilityBinOut] | None = Field(
        None, exclude=True, description="Stored for the web report's per-group diagram; not answered."
    )

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class EvaluationOut(BaseModel):
    id: str | None = Field(description="Opaque id; null when the request had store: false.")
    created_at: str = Field(description="RFC 3339 UTC.")
    n: int
    classes: int
    model: str | None
    dataset: str | None
    tags: dict[str, str]
    dataset_fingerprint: str = Field(
        description="sha256 of the labels as int64 little-endian (of the targets as float64 when soft or "
        "multi-hot; of the label sets' offsets then indices as int64 when CSR)."
    )
    losses: dict[str, float | None] = Field(
        description="Mean per loss; null where the value is not finite "
        "(e.g. sum_exp overflowing float64 on huge logit gaps)."
    )
    metrics: dict[str, MetricOut] = Field(
        description="Value per metric; a list for `average: none` (one per class) and `confusion_matrix` "
        "(C × C, rows = true class); null where not finite."
    )
    reliability: Reliability
    calibrator_id: str | None = Field(None, description="The calibrator applied before evaluating, if any.")
    sdm_id: str | None = Field(None, description="The SDM estimator whose region metrics are included, if any.")
    model_id: str | None = Field(None, description="The uploaded model that produced the logits, if any.")
    detector_id: str | None = Field(
        None, description="The detector whose separation of `inputs` and `ood_inputs` is under `ood`, if any."
    )
    ood: dict[str, float | None] | None = Field(
        None,
        description="With a model, `detector_id` and `ood_inputs`: AUROC, AUPR-In/Out, FPR@95 (both), detection "
        "error, n_in and n_out.",
    )
    ood_plots: dict[str, Any] | None = Field(
        None, exclude=True, description="Stored for the web report's OOD page (ROC, histograms); not answered."
    )
    per_sample: dict[str, list[float | None]] | None = None
    slices: dict[str, dict[str, SliceOut]] | None = Field(
        None, description="Per slice key, per group value (as a string): n, losses and metrics; null without slices."
    )


MODEL_TENSOR_FIELDS = (
    "labels", "targets", "teacher_logits", "sample_weight", "inputs.*", "ood_inputs.*", "label_sets.indices",
    "label_sets.offsets", "label_frequencies",
)  # fmt: skip
MODEL_SOURCE_FIELDS = ("inputs.*", "labels", "targets", "teacher_logits", "sample_weight")


class ModelEvaluationRequest(EvaluationRequest):
    """An evaluation of an uploaded model: its `inputs` (by input name) run through the model in place of
    `logits`; every other option as for /v1/evaluations. `model` defaults to the model's name."""

    inputs: dict[str, Tensor] = Field(
        default_factory=dict, description=f"One tensor per model input, batch first. {MODEL_INPUTS_NOTE}"
    )
    detector_id: str | None = Field(
        None,
        description="With `ood_inputs`: the separation of this detector's scores of `inputs` (in) and "
        "`ood_inputs` (out), reported under `ood` (as /v1/ood/evaluate).",
    )
    ood_inputs: dict[str, Tensor] | None = Field(None, description="Inputs of out-of-distribution samples.")
    source: dict[str, StrictStr] | None = source_field(
        MODEL_SOURCE_FIELDS,
        "A model input is `inputs.<name>`. Read chunk by chunk, a model batch at a time: neither the inputs nor "
        "the logits are held whole.",
    )

    _known_source = known_source(MODEL_SOURCE_FIELDS)

    model_config = examples({"inputs": {"x": [DIGIT_ROW]}, "labels": [2], "metrics": ["accuracy", "nll"]})

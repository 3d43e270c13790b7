"""Request and response bodies of /v1/sdm (api.md, "SDM"; math in sdm.md §4)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from app.core.validation import Precision
from app.examples import examples
from app.records import Labels
from app.tensors import MODEL_INPUTS_NOTE, NULL_NOTE, Tensor, known_source, source_field

FIT_TENSORS = tuple(
    f"{part}.{name}" for part in ("support", "calibration") for name in ("embeddings", "logits", "labels", "inputs.*")
)
FIT_INTEGER_FIELDS = frozenset({"support.labels", "calibration.labels"})
SCORE_TENSORS = ("embeddings", "logits")
SOURCE_FIELDS = tuple(
    f"{part}.{name}" for part in ("support", "calibration") for name in ("embeddings", "logits", "labels")
)


class SdmParams(BaseModel):
    """Hyper-parameters of the canonical (v2) SDM estimator."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(
        0.95,
        gt=0.5,
        le=1.0,
        description="Target class-conditional accuracy α of the high-reliability region, in (0.5, 1].",
    )
    k: int = Field(2048, ge=1, description="Neighbours retrieved (the cap on q); the effective k is min(k, n_support).")
    k_from_largest_class: bool = Field(
        False,
        description="Use the largest support class count as k (the reference's "
        "--use_training_set_max_label_size_as_max_q), still capped by `k`.",
    )
    precision: Precision = Field(
        "auto",
        description="dtype of the stored support exemplars and of the neighbour search. auto: the support "
        "embeddings' own dtype (api.md: inputs are computed in their own precision), so float32 tensors are "
        "searched in float32 as FAISS does and JSON lists (float64) in float64; calibration and scored embeddings are "
        "cast to it. The estimator after the search runs in the calibration logits' dtype (scored logits are cast "
        "to it): float32 follows the float32 reference operation by operation (saturation at 1.0, ψ ≥ α with α "
        "in float32), float64 keeps ties of exact arithmetic (sdm.md §6).",
    )
    support_statistics: bool = Field(
        False,
        description="Also compute leave-self-out q, d_nearest and d of the support points against the rest of the "
        "support (sdm.md §4.3–4.4, as the reference's training sees them); costs a support × support search.",
    )


class LabelledSetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embeddings: Tensor | None = Field(None, description="[N, M] exemplar vectors h′ (the vectors searched by L2).")
    logits: Tensor | None = Field(
        None, description="[N, C] logits z′; the prediction is argmax z′ (ties → lowest index)."
    )
    labels: Tensor | None = Field(None, description="[N] true labels in [0, C).")
    inputs: dict[str, Tensor] | None = Field(
        None, description=f"With `model_id`: the model's inputs for this set. {MODEL_INPUTS_NOTE}"
    )


class SdmRequest(Labels):
    """Fit the SDM estimator (sdm.md §8): neighbours of the calibration points among the support points
    (exact squared L2, ties by support index), q, the per-class distance eCDFs, d, the SDM activation,
    q′ and the Alg. 1 threshold search for q′_min and ψ. Support and calibration must be disjoint and come
    from the same model and representation as the points scored later."""

    model_config = examples({
            "support": {
                "embeddings": [[0, 0.1], [0.4, -0.3], [-0.6, 0.5], [1.2, 0.95], [-1.1, -0.8], [5, 5.2], [4.6, 4.7],
                               [5.5, 4.4], [3.9, 5.6], [6.1, 6]],
                "logits": [[2, -1], [1.5, -0.5], [1, 0.2], [-0.3, 0.4], [2.5, -2], [-2, 2.2], [-1, 1.3], [-1.5, 1.9],
                           [0.6, -0.2], [-2.2, 2.5]],
                "labels": [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
            },
            "calibration": {
                "embeddings": [[0.2, 0], [-0.3, 0.32], [0.5, 0.6], [-0.9, -0.2], [1.6, 1.3], [2.4, 2.1], [5.2, 4.9],
                               [4.8, 5.4], [5.8, 5.1], [4.1, 4], [3.2, 3.6], [6.5, 6.6]],
                "logits": [[3, -2], [2.2, -1.1], [0.9, 0.1], [2.6, -1.9], [0.1, 0.3], [0.2, -0.1], [-2.5, 2.8],
                           [-1.8, 2], [-2.9, 3.1], [-0.8, 1.6], [0.4, 0.1], [-2, 2.9]],
                "labels": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
            },
            "params": {"alpha": 0.95, "k": 2048},
        })  # fmt: skip

    support: LabelledSetIn = Field(
        default_factory=LabelledSetIn, description="The training (support) set searched for neighbours (required)."
    )
    calibration: LabelledSetIn = Field(
        default_factory=LabelledSetIn,
        description="The calibration set (required): eCDFs, q′_min and ψ come from it. In multipart, each tensor is "
        "a part named by its dotted path (support.embeddings, calibration.labels, …).",
    )
    params: SdmParams = Field(default_factory=SdmParams)
    model_id: str | None = Field(
        None,
        description="Fit on this uploaded model's embeddings and logits of each set's `inputs`.",
    )
    source: dict[str, StrictStr] | None = source_field(
        SOURCE_FIELDS,
        "The fit holds its rows: the files are read whole, at most CALIPER_MAX_SOURCE_BYTES; each set's fields "
        "have the same rows.",
    )

    _known_source = known_source(SOURCE_FIELDS)


class SdmLoss(BaseModel):
    marginal: float = Field(description="Mean −log_{2+q} sdm_y over rows.")
    balanced: float = Field(description="Mean over the C classes of each class's mean (a class without rows: 0).")


class CalibrationReport(BaseModel):
    """The calibration set under the fitted thresholds (in-sample)."""

    sdm_loss: SdmLoss
    ood: int = Field(description="Rows with ⌊q′⌋ ≤ 0 (q = 0).")
    high_reliability: int
    high_reliability_lower: int
    high_reliability_accuracy: float | None = Field(description="Accuracy inside the region; null when empty.")
    accuracy: float
    distance_ecdf_sizes: list[int] = Field(description="|D_c|: calibration rows of true class c with q > 0.")
    similarity_ecdf_sizes: list[int] = Field(description="|Q_c|: calibration rows of true class c.")


class SupportStatistics(BaseModel):
    """Leave-self-out statistics of the support points (params.support_statistics)."""

    q: list[int]
    d_nearest: list[float]
    d: list[float]
    sdm_loss: SdmLoss


class SdmOut(BaseModel):
    id: str
    created_at: str
    q_min: float | None = Field(
        description="q′_min, the smallest rescaled similarity of the high-reliability region; null when no "
        "threshold attains α for every class (q′_min = +∞: the region is empty, which is a valid fit)."
    )
    psi: list[float] = Field(description="ψ_c, the per-class thresholds on sdm_c (all 0 when q_min is null).")
    alpha: float
    hr_class_conditional_accuracy: float = Field(description="α when q_min is finite, else 0 (sdm.md §4.7).")
    high_reliability_attainable: bool
    message: str | None = Field(None, description="Why the region is empty, when it is.")
    k: int = Field(description="Effective number of neighbours, min(k, n_support).")
    n_support: int
    n_calibration: int
    classes: int
    dim: int
    params: SdmParams
    calibration: CalibrationReport
    support_statistics: SupportStatistics | None = Field(None, description="Only on the fit response, when asked.")
    model: str | None
    dataset: str | None
    tags: dict[str, str]


class SdmScoreRequest(BaseModel):
    model_config = examples({
            "embeddings": [[0.1, 0.2], [5.1, 5.0], [2.6, 2.5]],
            "logits": [[2.4, -1.6], [-2.6, 2.9], [0.3, 0.2]],
        })  # fmt: skip

    embeddings: Tensor | None = Field(None, description="[N, M] exemplar vectors, M as at fit time.")
    logits: Tensor | None = Field(None, description="[N, C] logits, C as at fit time.")


class ScoreSummary(BaseModel):
    n: int
    ood: int
    high_reliability: int
    high_reliability_lower: int
    q_min: float | None
    psi: list[float]
    alpha: float
    hr_class_conditional_accuracy: float


class SdmScoresOut(BaseModel):
    """Per-row columns (sdm.md §4.9). probabilities = the SDM output sdm(z′) = softmax(ln(2+q)·d·z′); its
    value at `prediction` is the prediction-conditional estimate; the α guarantee holds only inside the
    high-reliability region."""

    prediction: list[int] = Field(description="ŷ = argmax z′ (ties → lowest index).")
    q: list[int] = Field(description="Similarity: leading run of matching nearest support points.")
    d: list[float] = Field(description="Distance quantile min_c (1 − eCDF_c(d_nearest)).")
    d_nearest: list[float | None] = Field(
        description="Squared L2 distance to the nearest support point, recomputed from the two vectors (the "
        "search's ‖x‖² − 2x·s + ‖s‖² form loses digits to cancellation); a copy of a support point gets 0; "
        f"{NULL_NOTE}."
    )
    nearest_index: list[int] = Field(description="Support row of the nearest neighbour.")
    probabilities: list[list[float]]
    q_rescaled: list[float] = Field(description="q′ = min(q, (2+q)^{sdm_ŷ}).")
    is_ood: list[bool] = Field(description="⌊q′⌋ ≤ 0, the estimator's rule (sdm.md §4.6).")
    high_reliability: list[bool]
    effective_sample_size: list[list[int]] = Field(description="n̂_c per class, [N, C].")
    d_lower: list[float]
    d_upper: list[float]
    probabilities_lower: list[list[float]]
    probabilities_upper: list[list[float]]
    q_rescaled_lower: list[float]
    high_reliability_lower: list[bool]
    summary: ScoreSummary

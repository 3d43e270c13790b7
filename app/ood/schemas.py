"""Request and response bodies of /v1/ood (api.md, "Detectors")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from app.core.logit_scores import SCORES, ScoreSpec
from app.core.ood_metrics import PrIntegral
from app.core.specs import TermSpec, named, names_or_specs
from app.core.validation import Precision
from app.examples import examples
from app.records import Labels, RecordOut
from app.tensors import MODEL_INPUTS_NOTE, NULL_NOTE, Layers, Tensor, known_source, source_field

SCORE_TENSORS = ("logits",)
EVALUATE_TENSORS = ("scores_in", "scores_out", "features_in", "features_out", "features_in.*", "features_out.*")
DETECTOR_TENSORS = (
    "features",
    "labels",
    "features.*",
    "validation.features_in.*",
    "validation.features_out.*",
    "inputs.*",
    "calibration.features",
    "calibration.features.*",
    "calibration.inputs.*",
)
SCORE_FEATURES = ("features", "features.*")
SOURCE_FIELDS = ("features", "labels", "calibration.features")


def default_methods() -> list[TermSpec]:
    return [spec(name=name) for name, spec in SCORES.items()]


class ScoresRequest(BaseModel):
    """Logit-based OOD scores; every score is higher for more out-of-distribution inputs."""

    model_config = examples(
        {"logits": [[4.0, 0.1, 0.2], [0.3, 0.2, 0.1]], "methods": ["msp", {"name": "energy", "temperature": 2}]}
    )

    logits: Tensor | None = Field(None, description="[N, C] logits.")
    methods: list[ScoreSpec] = Field(
        default_factory=default_methods,
        description='Names or {"name", params}: msp, max_logit, energy (temperature 1), entropy, gen (gamma 0.1, '
        "m = min(100, C)).",
        json_schema_extra=names_or_specs(SCORES),
    )

    _named = field_validator("methods", mode="before")(named)


class ScoresOut(BaseModel):
    scores: dict[str, list[float | None]] = Field(description=f"One column per method; {NULL_NOTE}.")


class OodEvaluateRequest(BaseModel):
    """Separation of in- and out-of-distribution scores (higher = more OOD), given directly or as a
    detector's scores of `features_in`/`features_out`. Every distinct score is a threshold (no dropped
    ROC points) and ties count against the detector (mahalanobis.md §5)."""

    model_config = examples(
        {"scores_in": [0.1, 0.2, 0.3, 0.9], "scores_out": [0.8, 0.95, 0.4], "aupr": "average_precision"}
    )

    scores_in: Tensor | None = Field(None, description="[N_in] scores of in-distribution samples.")
    scores_out: Tensor | None = Field(None, description="[N_out] scores of out-of-distribution samples.")
    detector_id: str | None = Field(None, description="Score features_in/features_out with this detector.")
    features_in: Tensor | Layers | None = Field(
        None, description="[N_in, D] in-distribution features (with detector_id; a dict of layers for an ensemble)."
    )
    features_out: Tensor | Layers | None = Field(
        None, description="[N_out, D] out-of-distribution features (with detector_id; a dict of layers, as above)."
    )
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


class MahalanobisParams(BaseModel):
    """Lee et al. 2018 with a tied MLE covariance (divide by N); options as api.md names them."""

    model_config = ConfigDict(extra="forbid")

    covariance: Literal["tied", "per_class", "diagonal"] = Field(
        "tied",
        description="per_class: Σ_c = W_c/n_c with score min_c [d_c² + log|Σ_c| − 2 log π_c]; needs n_c ≫ D "
        "(a singular Σ_c is refused: add ridge or shrinkage). diagonal: the diagonal of each Σ_c (Gaussian naive "
        "Bayes), scored alike. Neither with relative_mahalanobis or ledoit_wolf.",
    )
    shrinkage: Literal["ledoit_wolf", "oas"] | Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="ledoit_wolf, oas, or α for (1 − α)Σ + α·tr(Σ)/D·I."
    )
    ridge: float = Field(0.0, ge=0, allow_inf_nan=False, description="λ added as Σ + λI.")
    normalize: bool = Field(False, description="L2-normalise features first (fit and score).")
    inverse: Literal["pinv", "solve"] = Field(
        "pinv", description="pinv (pinvh cut-off) or Cholesky (refuses singular Σ)."
    )
    layer_weights: dict[str, float] | None = Field(
        None,
        description="Feature ensemble (features as a dict of layers): the weight of each layer's score. Omitted: "
        "fitted by logistic regression on `validation` when given, else 1 for every layer.",
    )


class ClassGmmParams(BaseModel):
    """HVCM-style class-conditional mixtures: one scikit-learn `GaussianMixture` per class (EM, k-means
    initialisation with random_state = seed); score −max_c log p_c(x)."""

    model_config = ConfigDict(extra="forbid")

    components: int = Field(3, ge=1, le=256, description="Mixture components per class (at most its rows).")
    covariance_type: Literal["full", "diag", "tied", "spherical"] = Field(
        "full", description="scikit-learn's covariance_type (tied: one covariance per class's mixture)."
    )
    reg_covar: float = Field(1e-6, ge=0, allow_inf_nan=False, description="Added to the covariances' diagonals.")
    max_iter: int = Field(100, ge=1, le=10_000, description="EM iterations at most (the fit reports convergence).")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random_state of the k-means initialisation.")
    normalize: bool = Field(False, description="L2-normalise features first (fit and score).")


class KnnParams(BaseModel):
    """Sun et al. 2022: the k-th nearest normalised fit feature."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(50, ge=1, description="Which neighbour's distance is the score.")
    precision: Precision = Field(
        "auto",
        description="dtype of the stored normalised fit features and of the search. auto: the fit features' own "
        "dtype (float64 stays float64; JSON lists are float64); scored features are normalised in float64 and "
        "cast to it, and scores come back in it.",
    )


class VimParams(BaseModel):
    """Wang et al. 2022: the classifier's final layer and the principal-subspace dimension."""

    model_config = ConfigDict(extra="forbid")

    weight: list[list[float]] = Field(description="Final-layer weight W, [C, D] (logits = W x + b).")
    bias: list[float] = Field(description="Final-layer bias b, [C].")
    dim: int = Field(ge=1, description="Principal subspace dimension d (1 ≤ d < D).")


class CalibrationFeatures(BaseModel):
    """In-distribution calibration rows of a detector: features (a dict of layers for an ensemble), or a
    model's inputs with `model_id`."""

    model_config = ConfigDict(extra="forbid")

    features: Tensor | Layers | None = Field(None, description="[M, D] features (a dict of layers for an ensemble).")
    inputs: dict[str, Tensor] | None = Field(
        None, description=f"With `model_id`: the model's inputs. {MODEL_INPUTS_NOTE}"
    )


class DetectorRequest(Labels):
    """Fit a detector on in-distribution features and labels. Scores are higher for more OOD inputs:
    mahalanobis = min_c d_c²; relative_mahalanobis = min_c d_c² − d_0² (Ren et al. 2021); knn = the
    distance of the L2-normalised feature to its k-th nearest normalised fit feature (Sun et al. 2022;
    nearest_class is then the label of the nearest fit row); vim = α‖Rᵀ(x − u)‖ − logsumexp(Wx + b), the
    negated ViM score (Wang et al. 2022; labels optional, nearest_class = argmax of the logits); class_gmm =
    −max_c log p_c(x), p_c class c's Gaussian mixture fitted by EM (nearest_class = the argmax)."""

    model_config = examples(
        {
            "method": "mahalanobis",
            "params": {"shrinkage": "ledoit_wolf"},
            "features": [[1, 2, 0], [2, 3, 1], [3, 3, 2], [2, 0, 1], [6, 5, 3], [7, 7, 4], [5, 6, 5], [6, 6, 4]],
            "labels": [0, 0, 0, 0, 1, 1, 1, 1],
        }
    )

    method: Literal["mahalanobis", "relative_mahalanobis", "knn", "vim", "class_gmm"]
    features: Tensor | Layers | None = Field(
        None, description="[N, D] features, or a dict of named layers {name: [N, D_l]} for a feature ensemble."
    )
    labels: Tensor | None = Field(None, description="[N] integer labels 0..C−1, every class present.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="MahalanobisParams for mahalanobis methods, KnnParams for knn, VimParams for vim, ClassGmmParams "
        "for class_gmm.",
    )
    validation: dict[str, Any] | None = Field(
        None,
        description="For a feature ensemble: {features_in: {layer: [N, D_l]}, features_out: {layer: …}}, labelled "
        "ID/OOD features on which logistic regression fits the layer weights (Lee et al. 2018).",
    )
    model_id: str | None = Field(
        None,
        description="Fit on this uploaded model's embedding (feature outputs: layers) of `inputs`.",
    )
    inputs: dict[str, Tensor] | None = Field(
        None, description=f"With `model_id`: the model's inputs, by input name. {MODEL_INPUTS_NOTE}"
    )
    calibration: CalibrationFeatures | None = Field(
        None,
        description="In-distribution rows not used for the fit (Bates et al. 2023): their scores are stored, and "
        "`/score` then answers conformal `p_values` and `is_ood`.",
    )
    source: dict[str, StrictStr] | None = source_field(
        SOURCE_FIELDS,
        "mahalanobis and relative_mahalanobis stream them (their statistics merged chunk by chunk, on the Dask "
        "workers when CALIPER_DASK_SCHEDULER is set): the features are never held whole. knn keeps its support, "
        "vim fits a PCA and class_gmm runs EM: their files are read whole, at most CALIPER_MAX_SOURCE_BYTES. Not "
        "with a feature ensemble or `model_id`.",
    )

    _known_source = known_source(SOURCE_FIELDS)


class DetectorOut(RecordOut):
    method: str
    classes: int
    dim: int
    params: dict[str, Any]
    fit_info: dict[str, Any]
    model: str | None
    dataset: str | None
    tags: dict[str, str]


class ScoreRequest(BaseModel):
    model_config = examples({"features": [[2, 2, 1], [0, 8, 0]]})

    features: Tensor | Layers | None = Field(
        None, description="[N, D] features, D as at fit time (a dict of layers for an ensemble)."
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, allow_inf_nan=False, description="With a calibration set: `is_ood` is p_value ≤ alpha."
    )
    return_logits: bool = Field(
        False,
        description="mahalanobis detectors (tied: LDA, per_class: QDA, diagonal: naive Bayes) and class_gmm also "
        "answer `logits` [N, C] = log π_c + log p(x | c) with the full normalising constants: the generative "
        "classifier's class scores, which evaluations take like any logits.",
    )
    fdr: bool = Field(
        False,
        description="With a calibration set: `is_ood` by the Benjamini–Hochberg procedure at level alpha over the "
        "rows of this request (false discovery rate ≤ alpha) instead of per row.",
    )


class DetectorScoresOut(BaseModel):
    scores: list[float | None] = Field(description=f"Higher = more out-of-distribution; {NULL_NOTE}.")
    nearest_class: list[int] = Field(description="argmin_c d_c² (ties → lowest index).")
    logits: list[list[float | None]] | None = Field(
        None, description=f"With `return_logits` (else absent): log π_c + log p(x | c), [N, C]; {NULL_NOTE}."
    )
    p_values: list[float] | None = Field(
        None,
        description="With a calibration set (else absent): (1 + #{i : s_i ≥ s}) / (m + 1) over its m scores s_i; "
        "P(p ≤ α) ≤ α for an in-distribution row (Bates et al. 2023).",
    )
    is_ood: list[bool] | None = Field(
        None, description="With a calibration set (else absent): p_value ≤ alpha, or the BH rejections with `fdr`."
    )

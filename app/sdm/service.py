"""SDM use cases: validate and fit, store, load (cached by id), score, and the evaluation summary."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.core.errors import InputError
from app.core.evaluation import two_columns, validate_batch, validate_binary
from app.core.lru import LruCache
from app.core.neighbours import distances_stay_finite
from app.core.runtime import SessionCache
from app.core.sdm import LabelledSet, Scores, SdmEstimator
from app.core.validation import float_matrix
from app.models.runner import ModelRunner, Role
from app.records import finite_or_none, new_id, rfc3339, utc_now
from app.sdm.schemas import CalibrationReport, ScoreSummary, SdmOut, SdmParams, SdmRequest, SdmScoresOut
from app.sources.files import DataFiles
from app.storage.blobs import decode_arrays, encode_arrays
from app.storage.models import SdmRecord
from app.storage.repository import SdmRepository
from app.stored import StoredResource

EMPTY_REGION = (
    "no threshold q′_min attains α for every class on this calibration set (sdm.md §4.7): the high-reliability "
    "region is empty, so no point will be flagged high_reliability. Lower α, or add calibration data."
)


def searchable(values: np.ndarray | None, field: str, dtype: np.dtype | None, dim: int | None = None) -> np.ndarray:
    """A finite [N, M] float matrix in the search dtype (its own when None) whose squared distances
    cannot overflow that dtype."""
    embeddings = float_matrix(values, field, dim)
    embeddings = embeddings.astype(dtype or embeddings.dtype, copy=False)
    if not distances_stay_finite(embeddings):
        raise InputError(
            field, f"values are too large for squared L2 distances in {embeddings.dtype} (use precision float64)"
        )
    return embeddings


def labelled_set(
    arrays: dict[str, np.ndarray], part: str, dtype: np.dtype | None, like: LabelledSet | None = None
) -> LabelledSet:
    """One validated {embeddings, logits, labels} set, embeddings in the search dtype; a calibration set
    must match the support's (`like`) dimensions and classes. Errors name the dotted field."""
    try:
        batch = validate_batch(logits=arrays.get(f"{part}.logits"), labels=arrays.get(f"{part}.labels"))
    except InputError as exc:
        raise InputError(f"{part}.{exc.field}", exc.message) from exc
    if like is not None and batch.classes != like.logits.shape[1]:
        raise InputError(
            f"{part}.logits", f"has C = {batch.classes} classes; the support has C = {like.logits.shape[1]}"
        )
    embeddings = searchable(arrays.get(f"{part}.embeddings"), f"{part}.embeddings", dtype)
    if like is not None and embeddings.shape[1] != like.embeddings.shape[1]:
        raise InputError(
            f"{part}.embeddings",
            f"has M = {embeddings.shape[1]} dimensions; support.embeddings has M = {like.embeddings.shape[1]}",
        )
    if len(embeddings) != batch.n:
        raise InputError(f"{part}.embeddings", f"has {len(embeddings)} rows; {part}.logits has {batch.n}")
    assert batch.labels is not None
    return LabelledSet(embeddings, batch.matrix, batch.labels)


def fit(request: SdmRequest, arrays: dict[str, np.ndarray], cache: SessionCache) -> tuple[SdmEstimator, dict[str, Any]]:
    """Validate both sets, fit; returns the estimator and (when asked) the support statistics."""
    params = request.params
    support = labelled_set(arrays, "support", None if params.precision == "auto" else np.dtype(params.precision))
    calibration = labelled_set(arrays, "calibration", support.embeddings.dtype, like=support)
    present = np.unique(calibration.labels).size
    if present < 2:
        raise InputError("calibration.labels", f"needs at least 2 distinct classes, got {present}")
    k = params.k
    if params.k_from_largest_class:
        k = min(k, int(np.bincount(support.labels).max()))
    estimator = SdmEstimator(params.alpha, k).fit(support, calibration, cache)
    extra: dict[str, Any] = {}
    if params.support_statistics:
        if len(support.labels) < 2:
            raise InputError("params.support_statistics", "leave-self-out needs at least 2 support points")
        stats = estimator.support_statistics(support, cache)
        extra = {
            "q": stats["q"].tolist(),
            "d_nearest": stats["d_nearest"].tolist(),
            "d": stats["d"].tolist(),
            "sdm_loss": stats["sdm_loss"],
        }
    return estimator, extra


def sdm_out(record: SdmRecord, support_statistics: dict[str, Any] | None = None) -> SdmOut:
    q_min = record.fitted["q_min"]
    alpha = float(record.params["alpha"])
    return SdmOut(
        id=record.id,
        created_at=rfc3339(record.created_at),
        q_min=q_min,
        psi=record.fitted["psi"],
        alpha=alpha,
        hr_class_conditional_accuracy=alpha if q_min is not None else 0.0,
        high_reliability_attainable=q_min is not None,
        message=None if q_min is not None else EMPTY_REGION,
        k=record.fitted["k"],
        n_support=record.n_support,
        n_calibration=record.n_calibration,
        classes=record.classes,
        dim=record.dim,
        params=SdmParams.model_validate(record.params),
        calibration=CalibrationReport.model_validate(record.calibration),
        support_statistics=support_statistics or None,
        model=record.model,
        dataset=record.dataset,
        tags=record.tags,
    )


class SdmService(StoredResource[SdmRecord, SdmOut]):
    """SDM use cases: fit and store, look up, list, delete, score, and the metrics an evaluation with
    `sdm_id` adds. Loaded estimators are kept by id (records never change; deleting one evicts it), so
    scoring does not decode the support blob on every request; bounded by count, supports are large."""

    def __init__(
        self,
        repository: SdmRepository,
        runtime: SessionCache,
        models: ModelRunner,
        files: DataFiles | None = None,
        capacity: int = 4,
    ) -> None:
        """`files`: where a `source` may be read from (nowhere by default)."""
        super().__init__(repository, sdm_out)
        self.repository: SdmRepository = repository
        self.runtime, self.models, self.files = runtime, models, files or DataFiles()
        self._estimators: LruCache[SdmEstimator] = LruCache(capacity)

    def create(self, request: SdmRequest, arrays: dict[str, np.ndarray]) -> SdmOut:
        """Fit, store one row with the JSON summary and the fitted arrays (support exemplars included)
        as one blob; the answer carries the support statistics when asked."""
        roles: dict[str, Role] = {"embeddings": "embedding", "logits": "logits"}
        arrays = self.files.read(request.source, arrays)
        arrays = self.models.resolve(request.model_id, arrays, roles, ("support.", "calibration."))
        estimator, support_statistics = fit(request, arrays, self.runtime)
        support = estimator.support_embeddings_
        record = SdmRecord(
            id=new_id(),
            created_at=utc_now(),
            classes=len(estimator.psi_),
            dim=int(support.shape[1]),
            n_support=len(support),
            n_calibration=len(arrays["calibration.labels"]),
            model=request.model,
            dataset=request.dataset,
            tags=request.tags,
            params=request.params.model_dump(mode="json"),
            fitted={
                "q_min": estimator.q_min_ if math.isfinite(estimator.q_min_) else None,
                "psi": [float(v) for v in estimator.psi_],
                "k": estimator.k_,
            },
            calibration={
                **estimator.calibration_,
                "distance_ecdf_sizes": [len(v) for v in estimator.distance_ecdfs_],
                "similarity_ecdf_sizes": [len(v) for v in estimator.similarity_ecdfs_],
            },
            arrays=encode_arrays(estimator.fitted_arrays()),
        )
        return sdm_out(self.repository.add(record), support_statistics)

    def delete(self, sdm_id: str) -> None:
        super().delete(sdm_id)
        self._estimators.evict(sdm_id)

    def estimator(self, record: SdmRecord) -> SdmEstimator:
        """The record's estimator; its blob is read (a deferred column) only when not cached."""
        alpha, k = float(record.params["alpha"]), int(record.fitted["k"])
        return self._estimators.get(
            record.id,
            lambda: SdmEstimator(alpha, k).load_arrays(
                decode_arrays(self.repository.fitted_blob(record.id), f"sdm {record.id}")
            ),
        )

    def score(self, sdm_id: str, arrays: dict[str, np.ndarray]) -> tuple[SdmRecord, Scores]:
        """Score embeddings and logits with a stored estimator, loaded (or reused from the cache)."""
        record = self.record(sdm_id)
        return record, score_rows(self.estimator(record), record, arrays, self.runtime)

    def regions(self, sdm_id: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The per-row REGION_COLUMNS of scored rows (what region metrics of a streamed evaluation need)."""
        _, scores = self.score(sdm_id, arrays)
        return {k: scores.prediction if k == "prediction" else scores.columns[k] for k in REGION_COLUMNS}

    def evaluation_metrics(
        self, sdm_id: str, arrays: dict[str, np.ndarray], labels: np.ndarray
    ) -> dict[str, float | None]:
        """What an evaluation with `sdm_id` adds, from the raw logits and embeddings of its rows (an
        empty side's accuracy as null)."""
        _, scores = self.score(sdm_id, arrays)
        return finite_or_none(evaluation_metrics(scores, labels))


def score_rows(
    estimator: SdmEstimator, record: SdmRecord, arrays: dict[str, np.ndarray], cache: SessionCache
) -> Scores:
    """Validated embeddings [N, M] and logits [N, C] of one fitted model -> the estimator's columns."""
    embeddings = searchable(arrays.get("embeddings"), "embeddings", estimator.support_embeddings_.dtype, record.dim)
    raw = arrays.get("logits")
    if raw is not None and raw.ndim == 1 and record.classes == 2:  # binary log-odds (api.md)
        logits = two_columns(validate_binary(raw, "logits"))
    else:
        logits = float_matrix(raw, "logits", record.classes)
    if len(embeddings) != len(logits):
        raise InputError("embeddings", f"has {len(embeddings)} rows; logits has {len(logits)}")
    return estimator.score(embeddings, logits, cache)


def scores_out(record: SdmRecord, scores: Scores) -> SdmScoresOut:
    columns = scores.columns
    q_min = record.fitted["q_min"]
    alpha = float(record.params["alpha"])
    return SdmScoresOut(
        prediction=scores.prediction.tolist(),
        q=scores.q.tolist(),
        d=columns["d"].tolist(),
        d_nearest=scores.d_nearest.tolist(),
        nearest_index=scores.nearest_index.tolist(),
        probabilities=columns["probabilities"].tolist(),
        q_rescaled=columns["q_rescaled"].tolist(),
        is_ood=columns["is_ood"].tolist(),
        high_reliability=columns["high_reliability"].tolist(),
        effective_sample_size=columns["effective_sample_size"].tolist(),
        d_lower=columns["d_lower"].tolist(),
        d_upper=columns["d_upper"].tolist(),
        probabilities_lower=columns["probabilities_lower"].tolist(),
        probabilities_upper=columns["probabilities_upper"].tolist(),
        q_rescaled_lower=columns["q_rescaled_lower"].tolist(),
        high_reliability_lower=columns["high_reliability_lower"].tolist(),
        summary=ScoreSummary(
            n=len(scores.q),
            ood=int(columns["is_ood"].sum()),
            high_reliability=int(columns["high_reliability"].sum()),
            high_reliability_lower=int(columns["high_reliability_lower"].sum()),
            q_min=q_min,
            psi=record.fitted["psi"],
            alpha=alpha,
            hr_class_conditional_accuracy=alpha if q_min is not None else 0.0,
        ),
    )


def npz_columns(scores: Scores) -> dict[str, np.ndarray]:
    """The per-row columns under their JSON names, for `Accept: application/x-npz`."""
    columns = {k: v for k, v in scores.columns.items() if k != "log_probabilities"}
    return {
        "prediction": scores.prediction,
        "q": scores.q,
        "d_nearest": scores.d_nearest,
        "nearest_index": scores.nearest_index,
        **columns,
    }


# What an evaluation with `sdm_id` adds, each with whether higher is better (the gate's direction).
EVALUATION_METRICS: dict[str, bool] = {
    "sdm_ood_share": False,
    "sdm_hr_coverage": True,
    "sdm_hr_accuracy": True,
    "sdm_non_hr_accuracy": True,
    "sdm_hr_lower_coverage": True,
    "sdm_hr_lower_accuracy": True,
    "sdm_non_hr_lower_accuracy": True,
}


REGION_COLUMNS = ("prediction", "is_ood", "high_reliability", "high_reliability_lower")


def evaluation_metrics(scores: Scores, labels: np.ndarray) -> dict[str, float]:
    """What an evaluation with `sdm_id` adds (the keys of EVALUATION_METRICS), from its scores."""
    return region_metrics({"prediction": scores.prediction, **scores.columns}, labels)


def region_metrics(columns: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Coverage of the high-reliability region (and its lower variant), accuracy inside and outside it,
    and the OOD share, from per-row REGION_COLUMNS. NaN (reported null) for an empty side."""
    correct = columns["prediction"] == labels
    out = {"sdm_ood_share": float(columns["is_ood"].mean())}
    for name, inside in (("hr", columns["high_reliability"]), ("hr_lower", columns["high_reliability_lower"])):
        out[f"sdm_{name}_coverage"] = float(inside.mean())
        out[f"sdm_{name}_accuracy"] = float(correct[inside].mean()) if inside.any() else math.nan
        out[f"sdm_non_{name}_accuracy"] = float(correct[~inside].mean()) if (~inside).any() else math.nan
    return out

"""Detector use cases: fit (streamed sufficient statistics), store, score."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from app.core.errors import InputError
from app.core.mahalanobis import (
    GaussianStats,
    MahalanobisModel,
    PerClassModel,
    VimModel,
    fit,
    fit_per_class,
    fit_vim,
    knn_graph,
    per_class_graph,
    scoring_graph,
    vim_graph,
)
from app.core.runtime import SessionCache
from app.evaluation.service import rfc3339
from app.ood.schemas import DetectorOut, DetectorRequest, KnnParams, VimParams
from app.storage.blobs import decode_arrays, encode_arrays
from app.storage.models import DetectorRecord

CHUNK_BYTES = 8 << 20


def _features(values: np.ndarray | None, field: str, dim: int | None = None) -> np.ndarray:
    if values is None:
        raise InputError(field, "required")
    if values.ndim != 2:
        raise InputError(field, f"must be a 2-D array [N, D], got shape {list(values.shape)}")
    if values.shape[0] == 0:
        raise InputError(field, "is empty (N = 0)")
    if values.dtype.kind not in "fiu" or (values.dtype.kind == "f" and values.dtype not in (np.float32, np.float64)):
        raise InputError(field, f"dtype {values.dtype} is not supported (use float32 or float64)")
    if dim is not None and values.shape[1] != dim:
        raise InputError(field, f"has D = {values.shape[1]} features; the detector was fitted on D = {dim}")
    features = np.ascontiguousarray(values, dtype=values.dtype if values.dtype.kind == "f" else np.float64)
    if not np.isfinite(features).all():
        raise InputError(field, "contains NaN or infinite value(s)")
    return features


def _normalized(x: np.ndarray, normalize: bool) -> np.ndarray:
    if not normalize:
        return x
    norms: np.ndarray = np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = x / np.maximum(norms, 1e-12)
    return unit


def _labels(arrays: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, int]:
    labels = arrays.get("labels")
    if labels is None or labels.shape != (n,):
        raise InputError("labels", f"must be [N] = [{n}] integer labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0:
        raise InputError("labels", "must be non-negative integers")
    classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=classes)
    if n < classes:
        raise InputError("features", f"{n} rows for C = {classes} classes: need at least one per class")
    if (counts == 0).any():
        raise InputError(
            "labels", f"classes {np.flatnonzero(counts == 0).tolist()} have no rows (labels must be 0..C−1)"
        )
    return labels.astype(np.int64), classes


def fit_detector(
    request: DetectorRequest, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any], int]:
    """Fitted arrays to store, the validated params, fit info and C. Mahalanobis streams the features
    in chunks into mergeable float64 statistics (Ledoit–Wolf takes a second pass for its fourth moment
    around the class means); KNN keeps the normalised fit features."""
    try:
        params = request.typed_params()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError("params." + ".".join(str(p) for p in first["loc"]), first["msg"]) from exc
    features = _features(arrays.get("features"), "features")
    if isinstance(params, VimParams):
        return _fit_vim(params, features)
    labels, classes = _labels(arrays, len(features))
    info: dict[str, Any] = {"n": len(features), "class_counts": np.bincount(labels, minlength=classes).tolist()}
    if isinstance(params, KnnParams):
        if params.k > len(features):
            raise InputError("params.k", f"k = {params.k} exceeds the {len(features)} fit rows")
        unit = _normalized(features.astype(np.float64), True).astype(np.float32)
        return {"support": unit, "support_labels": labels}, params.model_dump(mode="json"), info, classes
    per_class = params.covariance == "per_class"
    if per_class and (request.method == "relative_mahalanobis" or params.shrinkage == "ledoit_wolf"):
        raise InputError("params.covariance", "per_class works with method mahalanobis and shrinkage null, oas or α")
    step = max(1, CHUNK_BYTES // features[0].nbytes)
    stats = GaussianStats(classes, features.shape[1])
    if per_class:
        stats.class_scatter = np.zeros((classes, features.shape[1], features.shape[1]))
    for start in range(0, len(features), step):
        chunk = _normalized(features[start : start + step].astype(np.float64), params.normalize)
        stats = stats.merge(GaussianStats.of(chunk, labels[start : start + step], classes, per_class))
    if per_class:
        untied = fit_per_class(stats, params.shrinkage, params.ridge)  # type: ignore[arg-type]
        fitted_pc = {"pc_whiten": untied.whiten, "pc_means": untied.means, "pc_offsets": untied.offsets}
        return fitted_pc, params.model_dump(mode="json"), info, classes
    fourth = None
    if params.shrinkage == "ledoit_wolf":
        means = stats.class_means
        fourth = 0.0
        for start in range(0, len(features), step):
            chunk = _normalized(features[start : start + step].astype(np.float64), params.normalize)
            fourth += float(np.sum(np.sum((chunk - means[labels[start : start + step]]) ** 2, axis=1) ** 2))
    model = fit(
        stats,
        shrinkage=params.shrinkage,
        ridge=params.ridge,
        inverse=params.inverse,
        relative=request.method == "relative_mahalanobis",
        normalize=params.normalize,
        fourth_moment=fourth,
    )
    fitted = {"mean": model.mean, "whiten": model.whiten, "means": model.means}
    if model.background is not None:
        fitted["background"] = model.background
    return fitted, params.model_dump(mode="json"), info, classes


def _fit_vim(
    params: VimParams, features: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any], int]:
    weight, bias = np.asarray(params.weight, dtype=np.float64), np.asarray(params.bias, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[1] != features.shape[1] or bias.shape != (weight.shape[0],):
        raise InputError(
            "params.weight",
            f"weight must be [C, D] with D = {features.shape[1]} and bias [C]; got "
            f"{list(weight.shape)} and {list(bias.shape)}",
        )
    if not np.isfinite(weight).all() or not np.isfinite(bias).all():
        raise InputError("params.weight", "contains NaN or infinite value(s)")
    if params.dim >= features.shape[1]:
        raise InputError("params.dim", f"dim = {params.dim} must be below D = {features.shape[1]}")
    model = fit_vim(features.astype(np.float64), weight, bias, params.dim)
    fitted = {
        "weight": weight,
        "bias": bias,
        "origin": model.origin,
        "residual": model.residual,
        "alpha": np.asarray(model.alpha),
    }
    info = {"n": len(features), "alpha": model.alpha}
    return fitted, {"dim": params.dim}, info, int(weight.shape[0])


def store_detector(
    request: DetectorRequest,
    fitted: dict[str, np.ndarray],
    params: dict[str, Any],
    info: dict[str, Any],
    classes: int,
    sessions: sessionmaker[Session],
) -> DetectorRecord:
    first = next(k for k in ("support", "origin", "mean", "pc_means") if k in fitted)
    dim = int(fitted[first].shape[-1])
    record = DetectorRecord(
        id=uuid.uuid4().hex,
        created_at=datetime.now(UTC).replace(tzinfo=None),
        method=request.method,
        classes=classes,
        dim=dim,
        model=request.model,
        dataset=request.dataset,
        tags=request.tags,
        params=params,
        fit_info=info,
        arrays=encode_arrays(fitted),
    )
    with sessions.begin() as session:
        session.add(record)
    return record


def scoring_model(record: DetectorRecord, dtype: np.dtype) -> onnx.ModelProto:
    arrays = decode_arrays(record.arrays)
    if record.method == "knn":
        return knn_graph(arrays["support"].astype(np.float64), int(record.params["k"]), dtype)
    if record.method == "vim":
        return vim_graph(
            VimModel(arrays["weight"], arrays["bias"], arrays["origin"], arrays["residual"], float(arrays["alpha"])),
            dtype,
        )
    if "pc_whiten" in arrays:
        return per_class_graph(PerClassModel(arrays["pc_whiten"], arrays["pc_means"], arrays["pc_offsets"]), dtype)
    model = MahalanobisModel(
        arrays["mean"],
        arrays["whiten"],
        arrays["means"],
        arrays.get("background"),
        bool(record.params.get("normalize", False)),
    )
    return scoring_graph(model, dtype)


def score(
    record: DetectorRecord, values: np.ndarray | None, cache: SessionCache, field: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """Outlier scores (higher = more OOD) and nearest classes of features, in chunks bounded by bytes
    (for knn: of the [chunk, N_fit] distance matrix)."""
    features = _features(values, field, record.dim)
    dtype = features.dtype
    session = cache.get(f"detector:{record.id}:{dtype}", lambda: scoring_model(record, dtype))
    if record.method == "knn":
        width = int(record.fit_info["n"])  # the [chunk, N_fit] distance matrix
    elif record.params.get("covariance") == "per_class":
        width = record.classes * record.dim  # the [chunk, C·D] whitened copies
    else:
        width = features.shape[1]
    step = max(1, CHUNK_BYTES // (8 * max(width, features.shape[1])))
    parts = [session.run(None, {"features": features[a : a + step]}) for a in range(0, len(features), step)]
    scores, nearest = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if record.method == "knn":
        nearest = decode_arrays(record.arrays)["support_labels"][nearest]
    return scores, nearest


def detector_out(record: DetectorRecord) -> DetectorOut:
    return DetectorOut(
        id=record.id,
        created_at=rfc3339(record.created_at),
        method=record.method,
        classes=record.classes,
        dim=record.dim,
        params=record.params,
        fit_info=record.fit_info,
        model=record.model,
        dataset=record.dataset,
        tags=record.tags,
    )

"""Detector use cases: fit (streamed sufficient statistics), store, score."""

from __future__ import annotations

from typing import Any

import numpy as np
import spox.opset.ai.onnx.v21 as op
from pydantic import ValidationError
from spox import Var

from app.core.errors import InputError
from app.core.lru import LruCache
from app.core.mahalanobis import (
    GaussianStats,
    MahalanobisModel,
    PerClassModel,
    ScoringModel,
    VimModel,
    fit,
    fit_per_class,
    fit_vim,
    scoring_graph,
)
from app.core.neighbours import KnnModel, nearest
from app.core.runtime import SessionCache
from app.core.validation import float_matrix, precision_dtype
from app.models.runner import ModelRunner
from app.ood.ensembles import check_layers, layers_of, logistic_weights, weights_for
from app.ood.schemas import DetectorOut, DetectorRequest, KnnParams, MahalanobisParams, VimParams
from app.records import new_id, rfc3339, utc_now
from app.storage.blobs import decode_arrays, encode_arrays
from app.storage.models import DetectorRecord
from app.storage.repository import Repository


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
    request: DetectorRequest, arrays: dict[str, np.ndarray], cache: SessionCache
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any], int]:
    """Fitted arrays to store, the validated params, fit info and C. Mahalanobis streams the features
    in chunks into mergeable float64 statistics (Ledoit–Wolf takes a second pass for its fourth moment
    around the class means); KNN keeps the normalised fit features."""
    try:
        params = request.typed_params()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError("params." + ".".join(str(p) for p in first["loc"]), first["msg"]) from exc
    layers = layers_of(arrays, "features")
    if layers:
        if not isinstance(params, MahalanobisParams) or "features" in arrays:
            raise InputError(
                "features",
                "a dict of layers (a feature ensemble) is for the mahalanobis methods, "
                "and replaces a single features array",
            )
        return _fit_ensemble(request, params, layers, arrays, cache)
    features = float_matrix(arrays.get("features"), "features")
    if isinstance(params, VimParams):
        return _fit_vim(params, features)
    labels, classes = _labels(arrays, len(features))
    info: dict[str, Any] = {"n": len(features), "class_counts": np.bincount(labels, minlength=classes).tolist()}
    if isinstance(params, KnnParams):
        if params.k > len(features):
            raise InputError("params.k", f"k = {params.k} exceeds the {len(features)} fit rows")
        dtype = precision_dtype(params.precision, features)
        unit = _normalized(features.astype(np.float64), True).astype(dtype)
        return {"support": unit, "support_labels": labels}, params.model_dump(mode="json"), info, classes
    per_class = params.covariance == "per_class"
    if per_class and (request.method == "relative_mahalanobis" or params.shrinkage == "ledoit_wolf"):
        raise InputError("params.covariance", "per_class works with method mahalanobis and shrinkage null, oas or α")
    spans = cache.chunking.spans(len(features), features[0].nbytes)
    stats = GaussianStats(classes, features.shape[1])
    if per_class:
        stats.class_scatter = np.zeros((classes, features.shape[1], features.shape[1]))
    for start, stop in spans:
        chunk = _normalized(features[start:stop].astype(np.float64), params.normalize)
        stats = stats.merge(GaussianStats.of(chunk, labels[start:stop], classes, per_class))
    if per_class:
        untied = fit_per_class(stats, params.shrinkage, params.ridge)  # type: ignore[arg-type]
        fitted_pc = {"pc_whiten": untied.whiten, "pc_means": untied.means, "pc_offsets": untied.offsets}
        return fitted_pc, params.model_dump(mode="json"), info, classes
    fourth = None
    if params.shrinkage == "ledoit_wolf":
        means = stats.class_means
        fourth = 0.0
        for start, stop in spans:
            chunk = _normalized(features[start:stop].astype(np.float64), params.normalize)
            fourth += float(np.sum(np.sum((chunk - means[labels[start:stop]]) ** 2, axis=1) ** 2))
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


def _fit_ensemble(
    request: DetectorRequest,
    params: MahalanobisParams,
    layers: dict[str, np.ndarray],
    arrays: dict[str, np.ndarray],
    cache: SessionCache,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any], int]:
    """One detector per layer (same labels and params), arrays stored under `layer<i>.`; weights given,
    fitted by logistic regression on validation layers, or 1 each."""
    names = list(layers)
    fitted: dict[str, np.ndarray] = {}
    single = request.model_copy(update={"params": params.model_dump(exclude={"layer_weights"})})
    dims: list[int] = []
    info: dict[str, Any] = {}
    classes = 0
    per_layer: list[tuple[dict[str, np.ndarray], dict[str, Any]]] = []
    for index, name in enumerate(names):
        features = float_matrix(layers[name], f"features.{name}")
        layer_fit, layer_params, info, classes = fit_detector(
            single, {"features": features, "labels": arrays.get("labels", np.zeros(0))}, cache
        )
        fitted.update({f"layer{index}.{k}": v for k, v in layer_fit.items()})
        per_layer.append((layer_fit, layer_params))
        dims.append(int(features.shape[1]))
    weights = weights_for(names, params.layer_weights, request.validation)
    if weights is None:
        valid_in, valid_out = layers_of(arrays, "validation.features_in"), layers_of(arrays, "validation.features_out")
        if valid_in or valid_out:
            check_layers(valid_in, names, "validation.features_in")
            check_layers(valid_out, names, "validation.features_out")
            columns_in: list[np.ndarray] = []
            columns_out: list[np.ndarray] = []
            for index, name in enumerate(names):
                layer_fit, layer_params = per_layer[index]
                model = scoring_model(layer_fit, request.method, layer_params)
                session = cache.create(scoring_graph(model, np.dtype(np.float64)), "ensemble-layer")
                for column, given, side in ((columns_in, valid_in, "in"), (columns_out, valid_out, "out")):
                    x = float_matrix(given[name], f"validation.features_{side}.{name}", dims[index]).astype(np.float64)
                    column.append(session.run(None, {"features": x})[0])
            coef, loss = logistic_weights(np.column_stack(columns_in), np.column_stack(columns_out), cache)
            weights = dict(zip(names, coef.tolist(), strict=True))
            info = {**info, "ensemble_logistic_loss": loss}
        else:
            weights = dict.fromkeys(names, 1.0)
    dumped = {**params.model_dump(mode="json"), "layers": names, "layer_weights": weights, "dims": dims}
    return fitted, dumped, info, classes


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


def scoring_model(arrays: dict[str, np.ndarray], method: str, params: dict[str, Any]) -> ScoringModel:
    """A stored detector's (or one layer's) fitted arrays as its scoring fragment."""
    if method == "knn":
        return KnnModel(arrays["support"], arrays["support_labels"].astype(np.int64), int(params["k"]))
    if method == "vim":
        return VimModel(arrays["weight"], arrays["bias"], arrays["origin"], arrays["residual"], float(arrays["alpha"]))
    if "pc_whiten" in arrays:
        return PerClassModel(arrays["pc_whiten"], arrays["pc_means"], arrays["pc_offsets"])
    return MahalanobisModel(
        arrays["mean"],
        arrays["whiten"],
        arrays["means"],
        arrays.get("background"),
        bool(params.get("normalize", False)),
    )


class DetectorService:
    """Detector use cases: fit and store, look up, list, delete, score. Decoded fitted arrays are kept
    per detector (KNN scoring reads its whole support on every request); deleting one evicts them and
    its scoring sessions."""

    DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

    def __init__(
        self, repository: Repository[DetectorRecord], runtime: SessionCache, models: ModelRunner, capacity: int = 8
    ) -> None:
        self.repository, self.runtime, self.models = repository, runtime, models
        self._fitted: LruCache[dict[str, np.ndarray]] = LruCache(capacity)

    def create(self, request: DetectorRequest, arrays: dict[str, np.ndarray]) -> DetectorRecord:
        arrays = self.models.resolve(request.model_id, arrays, {"features": "features"}, ("",))
        fitted, params, info, classes = fit_detector(request, arrays, self.runtime)
        if "dims" in params:
            dim = int(sum(params["dims"]))
        else:
            first = next(k for k in ("support", "origin", "mean", "pc_means") if k in fitted)
            dim = int(fitted[first].shape[-1])
        return self.repository.add(
            DetectorRecord(
                id=new_id(),
                created_at=utc_now(),
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
        )

    def get(self, detector_id: str) -> DetectorRecord:
        return self.repository.get(detector_id)

    def page(self, limit: int, cursor: str | None, model: str | None) -> tuple[list[DetectorRecord], str | None]:
        return self.repository.page(limit, cursor, model=model)

    def delete(self, detector_id: str) -> None:
        record = self.repository.get(detector_id)
        self.repository.delete(detector_id)
        self._fitted.evict(detector_id)
        for index in self._layer_indices(record):
            for dtype in self.DTYPES:
                self.runtime.evict(self._signature(detector_id, index, dtype))

    def score(
        self, detector_id: str, arrays: dict[str, np.ndarray], field: str = "features"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Outlier scores (higher = more OOD) and nearest classes, in chunks (knn: the exact search of
        app.core.neighbours, support in chunks with a running top-k). An ensemble sums w_l·s_l over its
        layers (given as `field.<layer>`) and reports the nearest class of its last layer."""
        record = self.get(detector_id)
        names = record.params.get("layers")
        if not names:
            return self._score_layer(record, None, float_matrix(arrays.get(field), field, record.dim))
        given = layers_of(arrays, field)
        check_layers(given, names, field)
        total: np.ndarray | None = None
        nearest_class = np.zeros(0, dtype=np.int64)
        for index, name in enumerate(names):
            features = float_matrix(given[name], f"{field}.{name}", int(record.params["dims"][index]))
            scores, nearest_class = self._score_layer(record, index, features)
            weighted = float(record.params["layer_weights"][name]) * scores.astype(np.float64)
            if total is not None and len(weighted) != len(total):
                raise InputError(f"{field}.{name}", "every layer must have the same rows")
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, nearest_class

    def score_fragment(self, detector_id: str, features: dict[str, Var]) -> Var:
        """The detector's outlier score as a fragment of Vars keyed like `model_outputs` (`features`, or
        `features.<layer>` for an ensemble, whose Σ w_l·s_l is summed in float64 as `score` does)."""
        record = self.get(detector_id)
        names = record.params.get("layers")
        if not names:
            return self.scoring_model(record).fragment(features["features"])[0]
        total: Var | None = None
        for index, name in enumerate(names):
            scores = self.scoring_model(record, index).fragment(features[f"features.{name}"])[0]
            weight = op.constant(value=np.asarray(record.params["layer_weights"][name], np.float64))
            weighted = op.mul(weight, op.cast(scores, to=np.float64))
            total = weighted if total is None else op.add(total, weighted)
        assert total is not None
        return total

    def model_features(
        self, detector_id: str, outputs: dict[str, np.ndarray], embedding_output: str | None
    ) -> dict[str, np.ndarray]:
        """The arrays `score` reads from a model's outputs: its layers for an ensemble, else the embedding."""
        return {k: outputs[v] for k, v in self.model_outputs(detector_id, embedding_output).items()}

    def model_outputs(self, detector_id: str, embedding_output: str | None) -> dict[str, str]:
        """{array `score` reads: model output name} for a detector applied to a model."""
        layers = self.get(detector_id).params.get("layers")
        if layers:
            return {f"features.{name}": name for name in layers}
        if embedding_output is None:
            raise InputError("detector_id", "the detector scores embeddings; the model has no `embedding_output`")
        return {"features": embedding_output}

    @staticmethod
    def _layer_indices(record: DetectorRecord) -> list[int | None]:
        return list(range(len(record.params["layers"]))) if record.params.get("layers") else [None]

    @staticmethod
    def _signature(detector_id: str, index: int | None, dtype: np.dtype) -> str:
        return f"detector:{detector_id}:{index}:{dtype}"

    def scoring_model(self, record: DetectorRecord, index: int | None = None) -> ScoringModel:
        """The stored detector's (or its layer's) scoring fragment, for the service and for exports."""
        return scoring_model(self._layer_arrays(record, index), record.method, record.params)

    def _layer_arrays(self, record: DetectorRecord, index: int | None) -> dict[str, np.ndarray]:
        arrays = self._fitted.get(record.id, lambda: decode_arrays(record.arrays, f"detector {record.id}"))
        if index is None:
            return arrays
        prefix = f"layer{index}."
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    def _score_layer(
        self, record: DetectorRecord, index: int | None, features: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        dtype = features.dtype
        if record.method == "knn":  # the exact search of the SDM estimator, on L2-normalised features
            arrays = self._layer_arrays(record, index)
            support = arrays["support"]
            unit = _normalized(features.astype(np.float64), True).astype(support.dtype)
            found = nearest(unit, support, int(record.params["k"]), self.runtime)
            return np.sqrt(found.distances[:, -1]), arrays["support_labels"][found.indices[:, 0]]
        session = self.runtime.get(
            self._signature(record.id, index, dtype),
            lambda: scoring_graph(
                scoring_model(self._layer_arrays(record, index), record.method, record.params), dtype
            ),
        )
        copies = record.classes if record.params.get("covariance") == "per_class" else 1  # [chunk, C·D] whitened
        spans = self.runtime.chunking.spans(len(features), 8 * copies * features.shape[1])
        parts = [session.run(None, {"features": features[a:b]}) for a, b in spans]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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

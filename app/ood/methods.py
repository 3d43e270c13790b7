"""Detector methods by name (api.md, "Detectors"): a request's params build the estimator to fit and
fit it; a stored record's params and arrays restore the fitted estimator. A feature ensemble's layers
travel as the dotted parts `features.<layer>`."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from app.core.detectors import (
    Detector,
    GaussianDetector,
    KnnDetector,
    LayerEnsemble,
    PerClassGaussianDetector,
    VimDetector,
)
from app.core.errors import InputError
from app.core.runtime import SessionCache
from app.core.validation import float_matrix
from app.ood.schemas import DetectorRequest, KnnParams, MahalanobisParams, VimParams

AnyDetector = Detector | LayerEnsemble
Params = MahalanobisParams | KnnParams | VimParams


def layers_of(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """{name: array} for the parts `prefix.name`, in request order."""
    return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def typed_params(method: str, params: dict[str, Any]) -> Params:
    """The method's parameter model (MahalanobisParams, KnnParams or VimParams); errors name the field."""
    model = {"knn": KnnParams, "vim": VimParams}.get(method, MahalanobisParams)
    try:
        return model.model_validate(params)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError("params." + ".".join(str(p) for p in first["loc"]), first["msg"]) from exc


def detector_for(method: str, params: Params, cache: SessionCache) -> Detector:
    """The unfitted estimator of one method (one layer's, for an ensemble)."""
    if isinstance(params, KnnParams):
        return KnnDetector(params.k, params.precision, cache)
    if isinstance(params, VimParams):
        return VimDetector(params.dim, np.asarray(params.weight), np.asarray(params.bias), cache)
    if params.covariance == "per_class":
        if method == "relative_mahalanobis" or params.shrinkage == "ledoit_wolf":
            raise InputError(
                "params.covariance", "per_class works with method mahalanobis and shrinkage null, oas or α"
            )
        return PerClassGaussianDetector(params.shrinkage, params.ridge, params.normalize, cache)
    relative = method == "relative_mahalanobis"
    return GaussianDetector(relative, params.shrinkage, params.ridge, params.normalize, params.inverse, cache)


def fit_detector(
    request: DetectorRequest, arrays: dict[str, np.ndarray], cache: SessionCache
) -> tuple[AnyDetector, dict[str, Any]]:
    """The fitted detector and the params its record keeps (an ensemble's add its layers, their
    dimensions and the weights; ViM's only `dim`, its head is stored with the arrays)."""
    params = typed_params(request.method, request.params)
    layers = layers_of(arrays, "features")
    if not layers:
        detector = detector_for(request.method, params, cache)
        detector.fit(float_matrix(arrays.get("features"), "features"), arrays.get("labels"))
        return detector, {"dim": params.dim} if isinstance(params, VimParams) else params.model_dump(mode="json")
    if not isinstance(params, MahalanobisParams) or "features" in arrays:
        raise InputError(
            "features",
            "a dict of layers (a feature ensemble) is for the mahalanobis methods, "
            "and replaces a single features array",
        )
    names = list(layers)
    weights = params.layer_weights
    if weights is not None and set(weights) != set(names):
        raise InputError("params.layer_weights", f"give a weight for each layer {names}, got {sorted(weights)}")
    ensemble = LayerEnsemble({name: detector_for(request.method, params, cache) for name in names}, weights)
    ensemble.fit(layers, arrays.get("labels"))
    valid_in, valid_out = layers_of(arrays, "validation.features_in"), layers_of(arrays, "validation.features_out")
    if weights is None and (valid_in or valid_out):
        ensemble.fit_weights(valid_in, valid_out)
    dumped = {**params.model_dump(mode="json"), "layers": names, "layer_weights": ensemble.weights_}
    return ensemble, dumped | {"dims": ensemble.dims}


def restored(method: str, params: dict[str, Any], arrays: dict[str, np.ndarray], cache: SessionCache) -> AnyDetector:
    """A stored detector's estimator, fitted again from its record's params and arrays."""
    if method == "vim":
        return VimDetector(int(params["dim"]), cache=cache).load_arrays(arrays)
    typed = typed_params(method, {k: v for k, v in params.items() if k not in ("layers", "dims")})
    names = params.get("layers")
    if not names:
        return detector_for(method, typed, cache).load_arrays(arrays)
    ensemble = LayerEnsemble({name: detector_for(method, typed, cache) for name in names})
    return ensemble.load_arrays(arrays, params["layer_weights"])

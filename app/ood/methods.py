"""Detector methods by name (api.md, "Detectors"): a request's params build the estimator to fit and
fit it; a stored record's params and arrays restore the fitted estimator. A feature ensemble's layers
travel as the dotted parts `features.<layer>`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from app.core.detectors import (
    ClassGmmDetector,
    Detector,
    GaussianDetector,
    KnnDetector,
    LayerEnsemble,
    PerClassGaussianDetector,
    VimDetector,
)
from app.core.errors import InputError
from app.core.fold import Gather, Source, merged_fold
from app.core.runtime import SessionCache
from app.core.validation import float_matrix
from app.ood.schemas import ClassGmmParams, DetectorRequest, KnnParams, MahalanobisParams, VimParams

AnyDetector = Detector | LayerEnsemble
P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class Method(Generic[P]):
    """A detector method: its parameter model (api.md's names) and the unfitted estimator (one layer's,
    for an ensemble) those parameters make; `stored` rebuilds it from what a record keeps when that is
    not the parameters themselves (ViM keeps only `dim`: its head is stored with the arrays)."""

    params: type[P]
    build: Callable[[P], Detector]
    stored: Callable[[dict[str, Any]], Detector] | None = None

    def typed(self, params: dict[str, Any]) -> P:
        """The parameters validated (errors name the field under `params.`)."""
        try:
            return self.params.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InputError("params." + ".".join(str(p) for p in first["loc"]), first["msg"]) from exc

    def create(self, params: dict[str, Any]) -> Detector:
        return self.build(self.typed(params))


def _gaussian(params: MahalanobisParams, relative: bool) -> Detector:
    if params.covariance in ("per_class", "diagonal"):
        if relative or params.shrinkage == "ledoit_wolf":
            raise InputError(
                "params.covariance",
                f"{params.covariance} works with method mahalanobis and shrinkage null, oas or α",
            )
        diagonal = params.covariance == "diagonal"
        return PerClassGaussianDetector(params.shrinkage, params.ridge, params.normalize, diagonal)
    return GaussianDetector(relative, params.shrinkage, params.ridge, params.normalize, params.inverse)


METHODS: dict[str, Method[Any]] = {
    "mahalanobis": Method(MahalanobisParams, partial(_gaussian, relative=False)),
    "relative_mahalanobis": Method(MahalanobisParams, partial(_gaussian, relative=True)),
    "knn": Method(KnnParams, lambda p: KnnDetector(p.k, p.precision)),
    "vim": Method(
        VimParams,
        lambda p: VimDetector(p.dim, np.asarray(p.weight), np.asarray(p.bias)),
        lambda stored: VimDetector(int(stored["dim"])),
    ),
    "class_gmm": Method(ClassGmmParams, lambda p: ClassGmmDetector(**p.model_dump())),
}


def streams(request: DetectorRequest) -> bool:
    """Whether the request's method fits from chunks (`Detector.fit_rows`) rather than whole arrays."""
    return METHODS[request.method].create(request.params).streams


def layers_of(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """{name: array} for the parts `prefix.name`, in request order."""
    return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def fit_detector(
    request: DetectorRequest,
    arrays: dict[str, np.ndarray],
    cache: SessionCache,
    rows: Source | None = None,
    gather: Gather[Any] = merged_fold,
) -> tuple[AnyDetector, dict[str, Any]]:
    """The fitted detector and the params its record keeps (an ensemble's add its layers, their
    dimensions and the weights; ViM's only `dim`, its head is stored with the arrays). `rows`: chunks of
    `features` and `labels` (from files) for a method that `streams`, its statistics merged by `gather`."""
    method = METHODS[request.method]
    params = method.typed(request.params)
    layers = layers_of(arrays, "features")
    if not layers:
        detector = method.build(params)
        if rows is not None:
            detector.fit_rows(rows, gather)
        else:
            detector.fit(float_matrix(arrays.get("features"), "features"), arrays.get("labels"), cache)
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
    ensemble = LayerEnsemble({name: method.build(params) for name in names}, weights)
    ensemble.fit(layers, arrays.get("labels"), cache)
    valid_in, valid_out = layers_of(arrays, "validation.features_in"), layers_of(arrays, "validation.features_out")
    if weights is None and (valid_in or valid_out):
        ensemble.fit_weights(valid_in, valid_out, cache)
    dumped = {**params.model_dump(mode="json"), "layers": names, "layer_weights": ensemble.weights_}
    return ensemble, dumped | {"dims": ensemble.dims}


def restored(method: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> AnyDetector:
    """A stored detector's estimator, fitted again from its record's params and arrays."""
    definition = METHODS[method]
    names = params.get("layers")
    if not names:
        detector = definition.stored(params) if definition.stored else definition.create(params)
        return detector.load_arrays(arrays)
    typed = definition.typed({k: v for k, v in params.items() if k not in ("layers", "dims")})  # the ensemble's
    ensemble = LayerEnsemble({name: definition.build(typed) for name in names})
    return ensemble.load_arrays(arrays, params["layer_weights"])

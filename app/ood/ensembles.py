"""Feature ensembles (Lee et al. 2018): one Mahalanobis detector per named layer, combined as
Σ_l w_l·s_l with weights given, fitted by logistic regression on labelled ID/OOD validation features
(ridge 1e-3 keeps separable validation sets bounded), or 1 per layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.core.errors import InputError
from app.core.logistic import fit_logistic
from app.core.runtime import SessionCache

PENALTY = 1e-3


def layers_of(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """{name: array} for the parts `prefix.name`, in request order."""
    return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def logistic_weights(
    scores_in: np.ndarray, scores_out: np.ndarray, cache: SessionCache | None = None
) -> tuple[np.ndarray, float]:
    """Weights of a logistic regression of OOD (1) vs ID (0) on per-layer scores [N, L], standardised,
    mapped back to raw-score weights (the intercept does not change a ranking)."""
    x = np.vstack([scores_in, scores_out]).astype(np.float64)
    y = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
    mean, scale = x.mean(0), np.maximum(x.std(0), 1e-12)
    z = (x - mean) / scale
    fitted = fit_logistic(z, y, ridge=PENALTY, options={"gtol": 1e-10}, cache=cache)
    return fitted.coef / scale, fitted.loss


def check_layers(given: dict[str, np.ndarray], names: list[str], field: str) -> None:
    if list(given) != names and set(given) != set(names):
        raise InputError(field, f"layers {sorted(given)} do not match the detector's {names}")


def weights_for(
    names: list[str], params_weights: dict[str, float] | None, validation: dict[str, Any] | None
) -> dict[str, float] | None:
    """Given weights (checked against the layers), or None to fit / default."""
    if params_weights is None:
        return None
    if set(params_weights) != set(names):
        raise InputError("params.layer_weights", f"give a weight for each layer {names}, got {sorted(params_weights)}")
    return {name: float(params_weights[name]) for name in names}

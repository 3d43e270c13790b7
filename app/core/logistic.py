"""Binary logistic regression with soft targets t ∈ [0, 1]: mean Σ [softplus(u) − t·u], u = F·a + c, plus
an optional ridge λ‖a‖² on the coefficients (not the intercept), minimised by L-BFGS-B with the loss and
gradient from the ONNX objective graph. The one implementation behind Platt/beta calibration and the
feature-ensemble weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from app.core.calibration import objectives
from app.core.graphrun import summed
from app.core.runtime import SessionCache


@dataclass(frozen=True)
class LogisticFit:
    coef: np.ndarray
    intercept: float
    loss: float  # the minimised objective (mean loss plus the ridge term)
    info: dict[str, Any]  # iterations, final gradient, convergence


def fit_logistic(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    ridge: float = 0.0,
    options: dict[str, Any] | None = None,
    cache: SessionCache | None = None,
) -> LogisticFit:
    """`features` [N, K] and `targets` [N] in float64; `options` go to scipy's L-BFGS-B."""
    k, n = features.shape[1], len(targets)

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        out = summed(
            "objective:logistic:float64",
            lambda: objectives.logistic_objective(np.dtype(np.float64)),
            {"features": features, "targets": targets},
            {"coef": theta[:k], "intercept": np.asarray(theta[k])},
            cache,
        )
        grad = np.concatenate([out["grad_coef"], [out["grad_intercept"]]]) / n
        grad[:k] += 2 * ridge * theta[:k]
        return float(out["loss"]) / n + ridge * float(theta[:k] @ theta[:k]), grad

    result = minimize(value_and_grad, np.zeros(k + 1), jac=True, method="L-BFGS-B", options=options or {})
    info = {
        "iterations": int(result.nit),
        "gradient": float(np.max(np.abs(result.jac))),
        "converged": bool(result.success),
    }
    return LogisticFit(result.x[:k], float(result.x[k]), float(result.fun), info)

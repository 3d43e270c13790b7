"""Calibrator fitters. Each has the scikit-learn shape: hyper-parameters in the constructor, `fit`
sets trailing-underscore fitted state (and `fit_info_`: iterations, final gradient, bound hit),
`apply_fragment` is the fitted map as a spox `Var → Var` fragment (logits -> probabilities), `apply_graph`
that fragment as a standalone model and `transform` runs it.
Losses and gradients are computed by ONNX objective graphs (`objectives.py`); scipy drives them."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import onnx
from scipy.optimize import OptimizeResult, isotonic_regression, minimize, minimize_scalar
from spox import Var

from app.core.calibration import apply, objectives
from app.core.fitted_state import FittedState, HyperParameters
from app.core.graphrun import mapped, mapped_outputs, summed
from app.core.logistic import fit_logistic
from app.core.runtime import SessionCache


def lbfgs(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray
) -> tuple[OptimizeResult, dict[str, Any]]:
    """scipy's L-BFGS-B from `start` on a (loss, gradient) function, and the fit info it reports."""
    result = minimize(
        value_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-15}
    )
    info = {
        "iterations": int(result.nit),
        "evaluations": int(result.nfev),
        "gradient": float(np.max(np.abs(result.jac))),
        "objective": float(result.fun),
        "converged": bool(result.success),
    }
    return result, info


class Calibrator(HyperParameters, FittedState, ABC):
    """Hyper-parameters in the constructor (`get_params`); `fit` sets the fitted attributes named by
    `state_keys()`. The runtime (`cache`: sessions and chunk sizes) is given to `fit` and `transform`."""

    method: ClassVar[str]

    def __init__(self) -> None:
        self.fit_info_: dict[str, Any] = {}

    @abstractmethod
    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> Calibrator: ...

    @abstractmethod
    def apply_fragment(self, logits: Var) -> Var:
        """Probabilities [N, C] from logits [N, C] (or [N, V, C] views when `takes_views`)."""

    @property
    def takes_views(self) -> bool:
        return False

    def apply_graph(self, dtype: np.dtype) -> onnx.ModelProto:
        return apply.standalone(self.apply_fragment, dtype, self.takes_views)

    def signature(self, dtype: np.dtype) -> str:
        """Session-cache key: a digest of the hyper-parameters and the fitted state's bytes (cheap even
        for a C×C matrix)."""
        digest = hashlib.sha256(self.method.encode())
        fitted = {k: v for k, v in vars(self).items() if k.endswith("_") and k != "fit_info_"}  # scikit-learn's mark
        values = self.get_params() | fitted
        for name, value in sorted(values.items()):
            numeric = isinstance(value, np.ndarray | float | int)
            digest.update(
                name.encode() + (np.asarray(value, np.float64).tobytes() if numeric else repr(value).encode())
            )
        return f"calibrator:{self.method}:{dtype}:{digest.hexdigest()}"

    def transform(self, logits: np.ndarray, cache: SessionCache | None = None) -> np.ndarray:
        dtype = logits.dtype
        return mapped(self.signature(dtype), lambda: self.apply_graph(dtype), {"logits": logits}, cache)


class TemperatureScaling(Calibrator):
    """One temperature minimizing NLL: safeguarded Newton on β = 1/T (NLL is convex in β, spec §3.1)
    inside the bracket given by `bounds` on T, with NLL, gradient and curvature from ONNX."""

    method = "temperature"

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        super().__init__()
        self.bounds = bounds

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> TemperatureScaling:
        dtype = logits.dtype
        n = len(labels)
        lo, hi = 1.0 / self.bounds[1], 1.0 / self.bounds[0]

        def derivatives(beta: float) -> tuple[float, float, float]:
            out = summed(
                f"objective:temperature:{dtype}",
                lambda: objectives.temperature_objective(dtype),
                {"logits": logits, "labels": labels},
                {"beta": np.asarray(beta, dtype)},
                cache,
            )
            return float(out["nll"]) / n, float(out["grad"]) / n, float(out["hess"]) / n

        beta = min(max(1.0, lo), hi)
        tolerance = 8 * float(np.finfo(dtype).eps)
        iterations = 0
        while iterations < 100:
            iterations += 1
            nll, grad, hess = derivatives(beta)
            if hess <= 1e-14:  # flat: every row saturated (NLL → 0 as β grows) or all logits tied (T moot)
                if nll > 1e-12:
                    break
                lo = beta
                beta = 0.5 * (lo + hi) if hi - lo > 1e-12 * hi else hi
                if beta == hi:
                    break
                continue
            if grad > 0:
                hi = beta
            else:
                lo = beta
            step = beta - grad / hess
            if not lo <= step <= hi:
                step = 0.5 * (lo + hi)
            # 8 ulps of the data's dtype: float32 gradients carry ~1e-7 relative noise, so a tighter
            # tolerance would only be met by bisecting the bracket down.
            if abs(step - beta) <= tolerance * beta or hi - lo <= tolerance * hi:
                beta = step
                break
            beta = step
        nll, grad, _ = derivatives(beta)
        t_min, t_max = self.bounds
        self.temperature_ = 1.0 / beta
        at_bound = np.isclose(self.temperature_, t_min, rtol=1e-9) or np.isclose(self.temperature_, t_max, rtol=1e-9)
        self.fit_info_ = {"iterations": iterations, "gradient": grad, "nll": nll, "bound_hit": bool(at_bound)}
        return self

    def apply_fragment(self, logits: Var) -> Var:
        return apply.temperature(logits, self.temperature_)

    def state_keys(self) -> tuple[str, ...]:
        return ("temperature",)


class CorrectnessAwareTemperature(TemperatureScaling):
    """One temperature minimizing the class-balanced correctness-aware loss of Liu et al. 2024 (spec §3.6):
    the top-1 confidence is pushed to 1 on rows the uncalibrated model gets right and to 0 on the others.
    The loss is not convex in T: a grid of 61 points on log T over `bounds`, then bounded Brent."""

    method = "temperature_ca"
    agreement_slope_: float | None = None  # fitted on [N, V, C] views only

    def __init__(self, bounds: tuple[float, float] = (0.1, 10.0)) -> None:
        super().__init__(bounds)

    def fit(
        self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None
    ) -> CorrectnessAwareTemperature:
        """Global T from [N, C] logits; with [N, V, C] views (view 0 the original) also the agreement slope."""
        if logits.ndim == 3:
            return self._fit_views(logits, labels, cache)
        self.agreement_slope_ = None
        log_lo, log_hi = np.log(self.bounds[0]), np.log(self.bounds[1])
        grid = np.linspace(log_lo, log_hi, 61)
        values = [self.loss(logits, labels, float(np.exp(t)), cache) for t in grid]
        best = int(np.argmin(values))
        a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        result = minimize_scalar(
            lambda t: self.loss(logits, labels, float(np.exp(t)), cache),
            bounds=(a, b),
            method="bounded",
            options={"xatol": 1e-12},
        )
        self.temperature_ = float(np.exp(result.x))
        at_bound = bool(np.isclose(result.x, log_lo) or np.isclose(result.x, log_hi))
        self.fit_info_ = {
            "iterations": int(result.nfev) + len(grid),
            "ca_loss": float(result.fun),
            "bound_hit": at_bound,
        }
        return self

    def _fit_views(
        self, views: np.ndarray, labels: np.ndarray, cache: SessionCache | None
    ) -> CorrectnessAwareTemperature:
        """Per-row T_i = clip(T·exp(s·(1 − a_i)), bounds), a_i the share of transformed views whose argmax
        agrees with the original's: rows whose prediction is unstable under the views get a softer softmax
        when s > 0 (the paper feeds view statistics to a small network; this is its one-feature,
        exportable form).
        (log T, s) minimize the same CA loss, by Nelder-Mead from the global fit (T, 0)."""
        dtype = views.dtype
        original = np.ascontiguousarray(views[:, 0, :])
        self.fit(original, labels, cache)
        agreement = mapped(
            f"views:agreement:{dtype}", lambda: objectives.view_agreement(dtype), {"logits": views}, cache
        ).astype(np.float64)

        def loss(theta: np.ndarray) -> float:
            per_row = np.clip(np.exp(theta[0] + theta[1] * (1.0 - agreement)), *self.bounds).astype(dtype)[:, None]
            return self.loss(original, labels, per_row, cache)

        start = np.array([np.log(self.temperature_), 0.0])
        result = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-13, "maxiter": 2000})
        self.temperature_ = float(np.exp(result.x[0]))
        self.agreement_slope_ = float(result.x[1])
        self.fit_info_ = {
            "iterations": int(result.nit),
            "ca_loss": float(result.fun),
            "global_ca_loss": float(loss(start)),
            "mean_agreement": float(agreement.mean()),
            "converged": bool(result.success),
        }
        return self

    def loss(
        self,
        logits: np.ndarray,
        labels: np.ndarray,
        temperature: float | np.ndarray,
        cache: SessionCache | None = None,
    ) -> float:
        """Class-balanced CA loss at one temperature, or at per-row temperatures given as [N, 1]."""
        dtype = logits.dtype
        per_row = isinstance(temperature, np.ndarray)
        rows = {"logits": logits, "labels": labels}
        constants = {}
        if per_row:
            rows["temperature"] = temperature  # type: ignore[assignment]
        else:
            constants["temperature"] = np.asarray(temperature, dtype)
        out = summed(
            f"objective:ca:{per_row}:{dtype}",
            lambda: objectives.correctness_aware_objective(dtype, per_row),
            rows,
            constants,
            cache,
        )
        n_right, n_wrong = float(out["n_right"]), float(out["n_wrong"])
        accuracy = n_right / (n_right + n_wrong)
        weight = (1 - accuracy) * n_right + accuracy * n_wrong
        if weight == 0:  # all right or all wrong: plain mean squared error
            return (float(out["sq_right"]) + float(out["sq_wrong"])) / (n_right + n_wrong)
        return ((1 - accuracy) * float(out["sq_right"]) + accuracy * float(out["sq_wrong"])) / weight

    @property
    def takes_views(self) -> bool:
        return self.agreement_slope_ is not None

    def apply_fragment(self, logits: Var) -> Var:
        if self.agreement_slope_ is None:
            return apply.temperature(logits, self.temperature_)
        return apply.view_temperature(logits, self.temperature_, self.agreement_slope_, self.bounds)

    def state_keys(self) -> tuple[str, ...]:
        return ("temperature", "agreement_slope")

    def fitted(self) -> dict[str, Any]:
        """The state, and `views: true` (derived, read back by nothing) for a fit on views, as api.md shows it."""
        return super().fitted() | ({"views": True} if self.takes_views else {})


class AdaptiveTemperature(Calibrator):
    """A per-input temperature (TempNet-style; api.md): T(z) = exp(w·φ̂(z) + b), φ̂ the sorted
    top-min(C, 10) log-probabilities and the entropy, standardised on the fit data; fitted by L-BFGS-B on
    the mean NLL + `reg`·‖w‖², from w = 0 and b = log T of global temperature scaling, which the fit
    therefore never does worse than on the fit data (w = 0 carries no penalty). State: weights_, bias_,
    feature_mean_, feature_scale_."""

    method = "adaptive_temperature"

    def __init__(self, reg: float = 1e-2) -> None:
        super().__init__()
        self.reg = reg

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> AdaptiveTemperature:
        dtype = logits.dtype
        n, classes = logits.shape
        top = min(classes, 10)
        features = mapped(f"features:adaptive:{top}:{dtype}", lambda: objectives.features_graph(dtype, top),
                          {"logits": logits}, cache)  # fmt: skip
        mean = features.mean(0)
        scale = features.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature (C ≤ 10: the smallest is never one)
        standard = (features - mean) / scale
        start = np.log(TemperatureScaling().fit(logits, labels, cache).temperature_)

        def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            weight, bias = theta[:-1], theta[-1]
            out = summed(
                f"objective:adaptive:{dtype}",
                lambda: objectives.adaptive_temperature_objective(dtype),
                {"logits": logits, "labels": labels, "features": standard},
                {"weight": weight, "bias": np.asarray(bias)},
                cache,
            )
            loss = float(out["nll"]) / n + self.reg * float(weight @ weight)
            grad = np.concatenate([out["grad_weight"] / n + 2 * self.reg * weight, [float(out["grad_bias"]) / n]])
            return loss, grad

        theta = np.concatenate([np.zeros(top + 1), [start]])
        result, self.fit_info_ = lbfgs(value_and_grad, theta)
        self.weights_, self.bias_ = result.x[:-1], float(result.x[-1])
        self.feature_mean_, self.feature_scale_ = mean, scale
        return self

    def apply_fragment(self, logits: Var) -> Var:
        return apply.adaptive_temperature(
            logits, np.asarray(self.weights_), float(self.bias_), np.asarray(self.feature_mean_),
            np.asarray(self.feature_scale_),
        )  # fmt: skip

    def state_keys(self) -> tuple[str, ...]:
        return ("weights", "bias", "feature_mean", "feature_scale")


class AffineScaling(Calibrator):
    """Vector scaling softmax(w ⊙ z + b), matrix scaling softmax(z Wᵀ + b) (Guo et al. 2017) and
    Dirichlet calibration softmax(log_softmax(z) Wᵀ + b) (Kull et al. 2019), fitted by L-BFGS-B on the
    mean NLL plus the ODIR penalty λ Σ_{i≠j} W_ij²/(C(C−1)) + μ Σ_j b_j²/C (matrix/Dirichlet)."""

    scale_: np.ndarray  # vector scaling's w
    weights_: np.ndarray  # matrix scaling's and Dirichlet's W
    bias_: np.ndarray

    def __init__(
        self,
        kind: str,
        on_log_probs: bool,
        reg_lambda: float = 0.0,
        reg_mu: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind, self.on_log_probs = kind, on_log_probs
        self.method = "vector_scaling" if kind == "vector" else ("dirichlet" if on_log_probs else "matrix_scaling")  # type: ignore[misc]
        self.reg_lambda, self.reg_mu = reg_lambda, reg_mu

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> AffineScaling:
        dtype = logits.dtype
        n, c = logits.shape
        shape = (c,) if self.kind == "vector" else (c, c)
        size = int(np.prod(shape))
        off_diagonal = ~np.eye(c, dtype=bool) if self.kind == "matrix" else None
        signature = f"objective:affine:{self.kind}:{self.on_log_probs}:{dtype}"

        def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            weight, bias = theta[:size].reshape(shape), theta[size:]
            out = summed(
                signature,
                lambda: objectives.affine_objective(dtype, self.kind, self.on_log_probs),  # type: ignore[arg-type]
                {"logits": logits, "labels": labels},
                {"weight": weight.astype(dtype), "bias": bias.astype(dtype)},
                cache,
            )
            loss = float(out["nll"]) / n
            grad_w, grad_b = out["grad_weight"] / n, out["grad_bias"] / n
            if off_diagonal is not None and self.reg_lambda:
                loss += self.reg_lambda * float(np.sum(weight[off_diagonal] ** 2)) / (c * (c - 1))
                grad_w = grad_w + 2 * self.reg_lambda * np.where(off_diagonal, weight, 0.0) / (c * (c - 1))
            if self.reg_mu:
                loss += self.reg_mu * float(np.sum(bias**2)) / c
                grad_b = grad_b + 2 * self.reg_mu * bias / c
            return loss, np.concatenate([np.ravel(grad_w), grad_b])

        start = np.concatenate([np.ravel(np.ones(c) if self.kind == "vector" else np.eye(c)), np.zeros(c)])
        result, self.fit_info_ = lbfgs(value_and_grad, start)
        setattr(self, self.state_keys()[0] + "_", result.x[:size].reshape(shape))
        self.bias_ = result.x[size:]
        return self

    def apply_fragment(self, logits: Var) -> Var:
        weight = self.scale_ if self.kind == "vector" else self.weights_
        return apply.affine(logits, weight, self.bias_, self.on_log_probs)

    def state_keys(self) -> tuple[str, ...]:
        return ("scale", "bias") if self.kind == "vector" else ("weights", "bias")


class HistogramBinning(Calibrator):
    """One-vs-rest histogram binning (Zadrozny & Elkan 2001): B equal-width bins with numpy linspace
    edges (spec §3.3 pins them), bins [e_k, e_{k+1}) with the last closed, value = mean label in the bin,
    an empty bin falls back to its centre; rows renormalised at apply time."""

    method = "histogram_binning"

    def __init__(self, bins: int = 15) -> None:
        super().__init__()
        self.bins = bins

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> HistogramBinning:
        dtype = logits.dtype
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        out = summed(
            f"fit:histogram:{self.bins}:{dtype}",
            lambda: apply.histogram_counts_graph(edges, dtype),
            {"logits": logits, "labels": labels},
            {},
            cache,
        )
        count = out["count"].reshape(-1, self.bins)
        centres = 0.5 * (edges[:-1] + edges[1:])
        self.bin_edges_ = edges
        self.bin_values_ = np.where(count > 0, out["positive"].reshape(-1, self.bins) / np.maximum(count, 1), centres)
        self.fit_info_ = {"empty_bins": int(np.sum(count == 0))}
        return self

    def apply_fragment(self, logits: Var) -> Var:
        return apply.histogram(logits, self.bin_edges_, self.bin_values_)

    def state_keys(self) -> tuple[str, ...]:
        return ("bin_edges", "bin_values")


class IsotonicCalibration(Calibrator):
    """One-vs-rest isotonic regression of 1[y = c] on p_c with scipy's PAV (ties in p averaged, as
    scikit-learn does), applied by linear interpolation clipped at the ends; rows renormalised."""

    method = "isotonic"

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> IsotonicCalibration:
        probs = mapped(
            f"calibrator:temperature:{logits.dtype}:1.0",
            lambda: apply.standalone(lambda z: apply.temperature(z, 1.0), logits.dtype),
            {"logits": logits},
            cache,
        )
        xs, ys = [], []
        for c in range(probs.shape[1]):
            x, inverse, counts = np.unique(probs[:, c].astype(np.float64), return_inverse=True, return_counts=True)
            y_mean = np.bincount(inverse, (labels == c).astype(np.float64)) / counts
            y = isotonic_regression(y_mean, weights=counts.astype(np.float64), increasing=True).x
            keep = np.ones(x.size, dtype=bool)  # drop interior points of constant runs: same interpolant
            keep[1:-1] = (y[1:-1] != y[:-2]) | (y[1:-1] != y[2:])
            xs.append(x[keep])
            ys.append(y[keep])
        width = max(2, max(len(x) for x in xs))

        def pad(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a, np.repeat(a[-1:], width - len(a))])

        self.thresholds_x_ = np.stack([pad(x) for x in xs])
        self.thresholds_y_ = np.stack([pad(y) for y in ys])
        self.fit_info_ = {"thresholds": [len(x) for x in xs]}
        return self

    def apply_fragment(self, logits: Var) -> Var:
        return apply.isotonic(logits, self.thresholds_x_, self.thresholds_y_)

    def state_keys(self) -> tuple[str, ...]:
        return ("thresholds_x", "thresholds_y")


class ScoreMap(Calibrator):
    """Binary calibrators of one score s: p_1 with two classes, the top-label confidence with more
    (the other classes then share 1 − s′ in proportion). Fitted by L-BFGS-B on the ONNX logistic loss."""

    scope_: apply.Scope

    @property
    @abstractmethod
    def coef(self) -> np.ndarray:
        """(a₁, a₂) of the sigmoid map on (log s, log(1 − s)), derived from the fitted state."""

    @property
    @abstractmethod
    def intercept(self) -> float: ...

    def scope(self, classes: int) -> apply.Scope:
        return "binary" if classes == 2 else "top_label"

    def _features(
        self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None
    ) -> tuple[np.ndarray, np.ndarray]:
        scope = self.scope(logits.shape[1])
        session_rows = {"logits": logits, "labels": labels}
        out = mapped_outputs(
            f"fit:score:{scope}:{logits.dtype}",
            lambda: apply.score_features_graph(scope, logits.dtype),
            session_rows,
            cache=cache,
        )
        return out["features"].astype(np.float64), out["target"].astype(np.float64)

    def _logistic(
        self, features: np.ndarray, targets: np.ndarray, cache: SessionCache | None
    ) -> tuple[np.ndarray, float]:
        options = {"maxiter": 1000, "gtol": 1e-12, "ftol": 1e-15}
        result = fit_logistic(features, targets, options=options, cache=cache)
        self.fit_info_ = result.info
        return result.coef, result.intercept

    def apply_fragment(self, logits: Var) -> Var:
        return apply.sigmoid_map(logits, self.coef, self.intercept, self.scope_)


class PlattScaling(ScoreMap):
    """Platt (1999): s′ = 1/(1 + exp(A·f + B)), f = logit(s), fitted on smoothed targets
    t₊ = (N₊ + 1)/(N₊ + 2), t₋ = 1/(N₋ + 2) as scikit-learn's `_sigmoid_calibration` does (spec §3.5)."""

    method = "platt"

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> PlattScaling:
        self.scope_ = self.scope(logits.shape[1])
        features, target = self._features(logits, labels, cache)
        positives = target.sum()
        negatives = len(target) - positives
        smoothed = np.where(target > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        logit = (features[:, 0] - features[:, 1])[:, None]
        (slope,), intercept = self._logistic(logit, smoothed, cache)
        self.a_, self.b_ = -float(slope), -intercept
        return self

    @property
    def coef(self) -> np.ndarray:
        return np.array([-self.a_, self.a_])

    @property
    def intercept(self) -> float:
        return -self.b_

    def state_keys(self) -> tuple[str, ...]:
        return ("a", "b", "scope")


class BetaCalibration(ScoreMap):
    """Beta calibration (Kull et al. 2017), betacal's `abm`: logit(s′) = a·ln s − b·ln(1 − s) + c by
    logistic regression on [ln s, −ln(1 − s)]; a coefficient that comes out negative is fixed at 0 and
    the rest refitted (spec §3.5)."""

    method = "beta"

    def fit(self, logits: np.ndarray, labels: np.ndarray, cache: SessionCache | None = None) -> BetaCalibration:
        self.scope_ = self.scope(logits.shape[1])
        features, target = self._features(logits, labels, cache)
        design = np.column_stack([features[:, 0], -features[:, 1]])
        keep = [0, 1]
        coef, intercept = self._logistic(design, target, cache)
        for index in (0, 1):
            if coef[keep.index(index)] < 0 and len(keep) == 2:
                keep = [1 - index]
                sub, intercept = self._logistic(design[:, keep], target, cache)
                coef = np.zeros(2)
                coef[keep[0]] = sub[0]
                break
        self.a_, self.b_, self.c_ = float(coef[0]), float(coef[1]), intercept
        return self

    @property
    def coef(self) -> np.ndarray:
        return np.array([self.a_, -self.b_])

    @property
    def intercept(self) -> float:
        return self.c_

    def state_keys(self) -> tuple[str, ...]:
        return ("a", "b", "c", "scope")

"""Calibrator fits against baselines timed in the same run.

(1) Temperature fit on 100,000 x 1,000 float32: against one fused evaluation pass over the same data
    (target ≤ 10x) and against the same safeguarded Newton iteration with numpy computing the NLL and
    its derivatives (target ≥ 3x faster).
(2) Matrix scaling and Dirichlet fits on 100,000 x 100: against the same L-BFGS-B with numpy gradients.
Run: `make bench` or `.venv/bin/python -m bench.calibrate [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from app.core.calibration.fitters import AffineScaling, TemperatureScaling
from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
from app.core.metrics import METRICS
from bench.timing import median_seconds, report, sized


def synthetic(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident logits: the label's logit raised on 70% of rows, everything scaled by 3."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)).astype(np.float32)
    hit = rng.random(n) < 0.7
    z[np.arange(n)[hit], labels[hit]] += 2.0
    return (3 * z).astype(np.float32), labels


def numpy_temperature(z: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The fitter's safeguarded Newton on β = 1/T, with numpy computing NLL, gradient and curvature."""
    lo, hi = 1 / bounds[1], 1 / bounds[0]
    beta, rows = 1.0, np.arange(len(y))
    tolerance = 8 * float(np.finfo(z.dtype).eps)
    for _ in range(100):
        log_p = log_softmax(beta * z, axis=1)
        p = np.exp(log_p)
        mean_z = (p * z).sum(1)
        grad = float(np.mean(mean_z - z[rows, y]))
        hess = float(np.mean((p * (z - mean_z[:, None]) ** 2).sum(1)))
        if grad > 0:
            hi = beta
        else:
            lo = beta
        step = beta - grad / hess if hess > 0 else 0.5 * (lo + hi)
        if not lo <= step <= hi:
            step = 0.5 * (lo + hi)
        if abs(step - beta) <= tolerance * beta or hi - lo <= tolerance * hi:
            return 1 / step
        beta = step
    return 1 / beta


def numpy_affine(z: np.ndarray, y: np.ndarray, on_log_probs: bool, reg: float = 0.01) -> tuple[float, int]:
    """L-BFGS-B on the same objective with numpy value and gradient (matrix scaling / Dirichlet + ODIR)."""
    n, c = z.shape
    x = log_softmax(z, axis=1) if on_log_probs else z
    onehot = np.eye(c, dtype=z.dtype)[y]
    off = ~np.eye(c, dtype=bool)

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: c * c].reshape(c, c), theta[c * c :]
        log_p = log_softmax(x @ w.T.astype(z.dtype) + b.astype(z.dtype), axis=1)
        loss = -float(np.mean(log_p[np.arange(n), y])) + reg * float(np.sum(w[off] ** 2)) / (c * (c - 1))
        loss += reg * float(np.sum(b**2)) / c
        residual = (np.exp(log_p) - onehot).astype(np.float64)
        grad_w = residual.T @ x / n + 2 * reg * np.where(off, w, 0) / (c * (c - 1))
        grad_b = residual.sum(0) / n + 2 * reg * b / c
        return loss, np.concatenate([grad_w.ravel(), grad_b])

    start = np.concatenate([np.eye(c).ravel(), np.zeros(c)])
    result = minimize(
        value_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-15}
    )
    return float(result.fun), int(result.nfev)


def bench_temperature(repeats: int) -> None:
    z, y = synthetic(sized(100_000, 2_000), sized(1_000, 20))
    batch = validate_batch(logits=z, labels=y)
    specs = tuple(METRICS[name].spec(name=name) for name in ("accuracy", "nll", "brier", "ece"))
    evaluator = Evaluator(EvaluationPlan(batch.layout, (), specs))

    def one_pass() -> None:
        evaluator.evaluate(batch)

    fitted = TemperatureScaling().fit(z, y)
    reference = numpy_temperature(z, y)
    print(
        f"\n(1) temperature fit, 100,000 x 1,000 float32: T = {fitted.temperature_:.8f} "
        f"({fitted.fit_info_['iterations']} Newton steps), numpy Newton T = {reference:.8f}"
    )
    rows = {
        "one fused evaluation pass": median_seconds(one_pass, repeats),
        "caliper temperature fit": median_seconds(lambda: TemperatureScaling().fit(z, y), repeats),
        "numpy Newton (same iteration)": median_seconds(lambda: numpy_temperature(z, y), repeats),
    }
    report("temperature fit", rows, "one fused evaluation pass")
    print(
        f"  caliper fit / one pass: {rows['caliper temperature fit'] / rows['one fused evaluation pass']:.2f}x"
        " (target ≤ 10x)"
    )
    print(
        f"  caliper speed-up over numpy: {rows['numpy Newton (same iteration)'] / rows['caliper temperature fit']:.2f}x"
        " (target ≥ 3x)"
    )


def bench_affine() -> None:
    z, y = synthetic(sized(100_000, 2_000), sized(100, 10), seed=1)
    print("\n(2) 100,000 x 100 float32, ODIR λ = μ = 0.01, L-BFGS-B to the same tolerances (one run each)")
    for name, on_log_probs in (("matrix_scaling", False), ("dirichlet", True)):
        start = time.perf_counter()
        fitted = AffineScaling("matrix", on_log_probs, 0.01, 0.01).fit(z, y)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        loss, evaluations = numpy_affine(z, y, on_log_probs)
        theirs = time.perf_counter() - start
        ours_each = ours / fitted.fit_info_["evaluations"]
        print(
            f"  {name:<15} caliper {ours:6.2f} s, {fitted.fit_info_['evaluations']} evaluations, objective "
            f"{fitted.fit_info_['objective']:.8f} | numpy gradients {theirs:6.2f} s, {evaluations} evaluations, "
            f"objective {loss:.8f} | per evaluation {ours_each * 1e3:.0f} vs {theirs / evaluations * 1e3:.0f} ms: "
            f"speed-up {theirs / evaluations / ours_each:4.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=sized(3, 1))
    args = parser.parse_args()
    bench_temperature(args.repeats)
    bench_affine()


if __name__ == "__main__":
    main()

"""Independent numpy/scipy implementations of the spec formulas, written from
`shared/specs/losses_calibration.md` without the ONNX core: the tests' oracle."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import log_softmax, logsumexp, softmax


def _onehot(y: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[y]


def loss_rows(
    name: str, z: np.ndarray, y: np.ndarray, params: dict[str, Any], zt: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row values and per-row denominator weights of a loss, in float64."""
    z = z.astype(np.float64)
    n, c = z.shape
    lp = log_softmax(z, axis=1)
    p = np.exp(lp)
    rows = np.arange(n)
    lpy = lp[rows, y]
    ce = -lpy
    ones = np.ones(n)
    oh = _onehot(y, c)
    if name in ("cross_entropy", "nll"):
        eps = params.get("label_smoothing", 0.0)
        w = np.asarray(params.get("weight") or np.ones(c), dtype=np.float64)
        value = (1 - eps) * w[y] * ce + eps / c * (-(lp * w).sum(1))
        return value, (w[y] if "weight" in params else ones)
    if name == "brier":
        return ((p - oh) ** 2).sum(1), ones
    if name == "focal":
        g = params.get("gamma", 2.0)
        alpha = np.asarray(params.get("alpha") or np.ones(c))
        return alpha[y] * (-np.expm1(lpy)) ** g * ce, ones
    if name == "z_loss":
        a, b = params["a"], params["b"]
        mu, sd = z.mean(1), z.std(1)
        zc = np.where(sd > 0, (z[rows, y] - mu) / np.where(sd > 0, sd, 1), 0.0)
        return np.logaddexp(0, a * (b - zc)) / a, ones
    if name in ("ldr_kl", "aldr_kl"):
        margin = params.get("margin", 0.1)
        f = z
        if params.get("transform") == "reference":
            if name == "ldr_kl":
                sp = np.logaddexp(0, z)
                f = sp / sp.mean(1, keepdims=True)
            else:
                f = z / np.abs(z).mean(1, keepdims=True)
        d = margin * (1 - oh) + f - f[rows, y][:, None]
        if name == "ldr_kl":
            lam = params.get("lam", 10.0)
            return lam * (logsumexp(d / lam, axis=1) - np.log(c)), ones
        lam0, alpha = params.get("lam0", 10.0), params.get("alpha", 2.0)
        q = softmax(f / lam0, axis=1) + 1e-5
        q /= q.sum(1, keepdims=True)
        kl = (q * np.log(c * q)).sum(1)
        lam = lam0 * (1 - kl / (alpha * np.log(c)))
        penalty = alpha * np.log(c) / (2 * lam0) * (lam - lam0) ** 2
        return lam * (logsumexp(d / lam[:, None], axis=1) - np.log(c)) - penalty, ones
    if name in ("comp_sum", "mae", "sum_exp"):
        tau = {"mae": 2.0, "sum_exp": 0.0}.get(name, params.get("tau"))
        if tau == 1:
            return ce, ones
        return np.expm1((1 - tau) * ce) / (1 - tau), ones
    if name == "gce":
        q = params.get("q", 0.7)
        value = -np.expm1(q * lpy) / q
        if params.get("k") is not None:
            value = np.minimum(value, (1 - params["k"] ** q) / q)
        return value, ones
    if name == "dice":
        a, s = params.get("alpha", 0.01), params.get("gamma", 1.0)
        one_minus_p = -np.expm1(lp)
        top = z.argmax(1)  # for the top class, 1 − p is the sum of the other classes (exact as p → 1)
        one_minus_p[rows, top] = np.array([p[i, np.arange(c) != top[i]].sum() for i in range(n)])
        pt = one_minus_p**a * p
        return (1 - (2 * pt * oh + s) / (pt**2 + oh**2 + s)).sum(1), ones
    if name == "stablemax_ce":
        sx = np.where(z >= 0, z + 1, 1 / (1 - np.minimum(z, 0)))
        return -np.log(sx[rows, y] / sx.sum(1)), ones
    if name == "taylor_softmax_ce":
        order = params.get("order", 2)
        t = sum(z**k / math.factorial(k) for k in range(order + 1))
        return -np.log(t[rows, y] / t.sum(1)), ones
    if name in ("hinge_crammer_singer", "hinge_weston_watkins"):
        m = np.maximum(0, params.get("margin", 1.0) + z - z[rows, y][:, None])
        m[rows, y] = 0
        return (m.max(1) if name == "hinge_crammer_singer" else m.sum(1)), ones
    if name == "squared_hinge":
        t = 2 * oh - 1
        return (np.maximum(0, params.get("margin", 1.0) - t * z) ** 2).sum(1), ones
    if name == "kd":
        tt = params.get("temperature", 4.0)
        pt_log = log_softmax(zt / tt, axis=1)
        return tt**2 * (np.exp(pt_log) * (pt_log - log_softmax(z / tt, axis=1))).sum(1), ones
    if name == "nkd":
        tau, gamma = params.get("temperature", 1.0), params.get("gamma", 1.5)
        assert zt is not None
        target = -softmax(zt, axis=1)[rows, y] * lpy
        non = np.zeros(n)
        for i in range(n):
            keep = np.arange(c) != y[i]
            s_hat = log_softmax(z[i, keep] / tau)
            t_hat = softmax(zt[i, keep] / tau)
            non[i] = -gamma * tau**2 * (t_hat * s_hat).sum()
        return target + non, ones
    raise KeyError(name)


def loss_mean(
    name: str,
    z: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    zt: np.ndarray | None = None,
    w: np.ndarray | None = None,
) -> float:
    value, denominator = loss_rows(name, z, y, params, zt)
    w = np.ones(len(y)) if w is None else w
    return float((w * value).sum() / (w * denominator).sum())


def _collapse_terms(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log Σ_{j≠ŷ} e^(z_j − m) and m − min z per row, in float64."""
    top = z.argmax(1)
    others = np.where(np.arange(z.shape[1]) == top[:, None], -np.inf, z - z.max(1, keepdims=True))
    return logsumexp(others, axis=1), np.ptp(z, axis=1)


def collapsed_rows(z: np.ndarray) -> np.ndarray:
    """api.md's softmax_collapse rule in float64: log Σ_{j≠ŷ} e^(z_j − m) < −24·ln 2, or m − min z > 150·ln 2."""
    log_sum, spread = _collapse_terms(z)
    return (log_sum < -24 * math.log(2)) | (spread > 150 * math.log(2))


def collapse_margin(z: np.ndarray) -> float:
    """The smallest relative distance of any row from either collapse threshold (for keeping test data off
    the discontinuity: a row closer than the rounding of exp/log could be counted either way)."""
    log_sum, spread = _collapse_terms(z)  # |log S − log 2⁻²⁴| is S's relative distance from its limit
    sum_margin = np.min(np.abs(log_sum + 24 * math.log(2)))
    return float(min(sum_margin, np.min(np.abs(spread / (150 * math.log(2)) - 1))))


EDGE_MARGIN = 1e-5  # ≫ the float32 error of a probability (a few ulps of 1, ~1e-7·C), ≪ a bin's width


def off_discontinuities(z: np.ndarray, uniform_bins: set[int], margin: float = EDGE_MARGIN) -> np.ndarray:
    """Which rows sit away from every discontinuity of the binned and order-based metrics, so that two
    correct implementations (say the float32 core and this float64 oracle) cannot disagree there by more
    than rounding. A row is dropped when
    - a probability lies within `margin` of an inner edge k/B of a uniform binning (ece, mce, classwise);
    - its confidence lies within `margin` of another row's (AURC and quantile bins order by confidence);
    - its remainder S = Σ_{j≠ŷ} p_j lies in (1e-20, margin): the confidence 1 − S may or may not round to
      exactly 1 (joining the block of rows tied at 1, which both sides order by row index). Below 1e-20 it
      is exactly 1 in both dtypes."""
    p = softmax(z, axis=1)
    keep = np.ones(len(z), bool)
    for bins in uniform_bins:
        edge = np.rint(p * bins)
        near = (np.abs(p * bins - edge) < margin * bins) & (edge > 0) & (edge < bins)
        keep &= ~near.any(1)
    rest = np.sort(p, axis=1)[:, :-1].sum(1)
    keep &= ~((rest > 1e-20) & (rest < margin))
    conf = p.max(1)
    order = np.argsort(conf)
    close = (np.diff(conf[order]) < margin) & (conf[order][1:] < 1.0)  # exact ties at 1 order alike
    keep[order[1:][close]] = keep[order[:-1][close]] = False
    return keep


def _bins(conf: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum(np.floor(conf * bins), bins - 1).astype(int)


def _gap(conf: np.ndarray, acc: np.ndarray, w: np.ndarray, groups: list[np.ndarray], norm: str) -> float:
    gaps, weights = [], []
    for g in groups:
        if g.size and w[g].sum() > 0:
            gaps.append(abs(np.average(acc[g], weights=w[g]) - np.average(conf[g], weights=w[g])))
            weights.append(w[g].sum())
    gaps_a, weights_a = np.array(gaps), np.array(weights) / np.sum(weights)
    if norm == "l1":
        return float((gaps_a * weights_a).sum())
    if norm == "l2":
        return float(np.sqrt((gaps_a**2 * weights_a).sum()))
    return float(gaps_a.max())


def metric(name: str, z: np.ndarray, y: np.ndarray, params: dict[str, Any], w: np.ndarray | None = None) -> float:
    z = z.astype(np.float64)
    n, c = z.shape
    w = np.ones(n) if w is None else w.astype(np.float64)
    p = softmax(z, axis=1)
    lp = log_softmax(z, axis=1)
    pred = z.argmax(1)
    conf = p.max(1)
    acc = (pred == y).astype(float)
    if name == "accuracy":
        return float(np.average(acc, weights=w))
    if name == "top_k_accuracy":
        k = params.get("k", 5)
        order = np.argsort(-z, axis=1, kind="stable")
        hit = np.array([y[i] in order[i, :k] for i in range(n)], dtype=float)
        return float(np.average(hit, weights=w))
    if name == "nll":
        return float(np.average(-lp[np.arange(n), y], weights=w))
    if name == "brier":
        return float(np.average(((p - np.eye(c)[y]) ** 2).sum(1), weights=w))
    if name == "entropy":
        return float(np.average(-(p * lp).sum(1), weights=w))
    if name in ("ece", "mce"):
        bins = params.get("bins", 15)
        norm = "max" if name == "mce" else params.get("norm", "l1")
        if params.get("binning", "uniform") == "quantile":
            groups = np.array_split(np.argsort(conf, kind="stable"), bins)
        else:
            idx = _bins(conf, bins)
            groups = [np.flatnonzero(idx == b) for b in range(bins)]
        return _gap(conf, acc, w, groups, norm)
    if name == "classwise_ece":
        bins = params.get("bins", 15)
        per_class = []
        for k in range(c):
            idx = _bins(p[:, k], bins)
            per_class.append(
                _gap(p[:, k], (y == k).astype(float), w, [np.flatnonzero(idx == b) for b in range(bins)], "l1")
            )
        return float(np.mean(per_class))
    if name == "aurc":
        order = np.lexsort((np.arange(n), -conf))
        ws, err = w[order], 1 - acc[order]
        risk = np.cumsum(ws * err) / np.cumsum(ws)
        return float((ws * risk).sum() / ws.sum())
    if name == "softmax_collapse":
        return float(np.average(collapsed_rows(z), weights=w))
    raise KeyError(name)

"""An independent float64 numpy implementation of the canonical SDM estimator, straight from sdm.md §4
(brute-force distances, explicit loops, the naive Alg. 1 scan), to check the ONNX core against."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax


def neighbours(queries: np.ndarray, support: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances, sorted by (distance, support index)."""
    d = ((queries[:, None, :].astype(np.float64) - support[None].astype(np.float64)) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(len(support)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def similarity(
    order: np.ndarray, prediction: np.ndarray, support_y: np.ndarray, support_pred: np.ndarray
) -> np.ndarray:
    q = np.zeros(len(order), dtype=np.int64)
    for i, row in enumerate(order):
        for j in row:
            if support_y[j] == support_pred[j] and support_pred[j] == prediction[i]:
                q[i] += 1
            else:
                break
    return q


def quantile_d(d0: np.ndarray, ecdfs: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(d0))
    for i, x in enumerate(d0):
        r = [1 - np.sum(e < x) / len(e) if len(e) else 0.0 for e in ecdfs]
        out[i] = min(r)
    return out


def sdm(logits: np.ndarray, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(np.log(2 + q)[:, None] * d[:, None] * logits, axis=1))


def rescaled(q: np.ndarray, probabilities: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return np.minimum(q, (2.0 + q) ** probabilities[np.arange(len(q)), prediction])


def algorithm_1(
    q_rescaled: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, alpha: float
) -> tuple[float, np.ndarray]:
    classes = probabilities.shape[1]
    kept = np.floor(q_rescaled) > 0
    for t in np.unique(q_rescaled[kept]):
        psi = np.zeros(classes)
        for c in range(classes):
            values = np.sort(probabilities[kept & (labels == c) & (q_rescaled >= t), c])
            if len(values):
                psi[c] = max(values[min(int((1 - alpha) * len(values)), len(values) - 1)], 0.0)
        if np.all(psi >= alpha):
            return float(t), psi
    return math.inf, np.zeros(classes)


@dataclass
class OracleFit:
    support_x: np.ndarray
    support_y: np.ndarray
    support_pred: np.ndarray
    k: int
    alpha: float
    distance_ecdfs: list[np.ndarray]
    similarity_ecdfs: list[np.ndarray]
    q_min: float
    psi: np.ndarray
    calibration: dict[str, np.ndarray]


def fit(support: tuple[np.ndarray, ...], calibration: tuple[np.ndarray, ...], alpha: float, k: int) -> OracleFit:
    sx, sz, sy = support
    cx, cz, cy = calibration
    classes = sz.shape[1]
    k = min(k, len(sx))
    support_pred = sz.argmax(1)
    dist, order = neighbours(cx, sx, k)
    prediction = cz.argmax(1)
    q = similarity(order, prediction, sy, support_pred)
    d0 = dist[:, 0]
    ecdfs = [np.sort(d0[(cy == c) & (q > 0)]) for c in range(classes)]
    d = quantile_d(d0, ecdfs)
    p = sdm(cz, q, d)
    qr = rescaled(q, p, prediction)
    q_min, psi = algorithm_1(qr, p, cy, alpha)
    q_ecdfs = [np.sort(qr[cy == c]) for c in range(classes)]
    cal = {"q": q, "d_nearest": d0, "d": d, "probabilities": p, "q_rescaled": qr}
    return OracleFit(sx, sy, support_pred, k, alpha, ecdfs, q_ecdfs, q_min, psi, cal)


def score(model: OracleFit, x: np.ndarray, z: np.ndarray) -> dict[str, Any]:
    dist, order = neighbours(x, model.support_x, model.k)
    prediction = z.argmax(1)
    q = similarity(order, prediction, model.support_y, model.support_pred)
    d0 = dist[:, 0]
    d = quantile_d(d0, model.distance_ecdfs)
    p = sdm(z, q, d)
    qr = rescaled(q, p, prediction)
    n_hat = np.array(
        [[min(np.sum(e < v), max(0, len(e) - 1)) if len(e) else 0 for e in model.similarity_ecdfs] for v in qr]
    )
    log_term = math.log(2 / (1 - model.alpha)) if model.alpha < 1 else math.inf
    with np.errstate(divide="ignore"):
        eps_c = np.where(n_hat > 0, np.sqrt(log_term / (2 * np.maximum(n_hat, 1))), 1.0)
    eps = eps_c.max(1)
    d_lower, d_upper = np.clip(d - eps, 0, 1), np.clip(d + eps, 0, 1)
    p_lower, p_upper = sdm(z, q, d_lower), sdm(z, q, d_upper)
    qr_lower = rescaled(q, p_lower, prediction)

    def hr(qr_: np.ndarray, p_: np.ndarray) -> np.ndarray:
        flags = np.zeros(len(qr_), dtype=bool)
        for i in range(len(qr_)):
            above = set(np.flatnonzero(p_[i] >= model.psi).tolist())
            flags[i] = np.floor(qr_[i]) > 0 and qr_[i] >= model.q_min and above == {int(prediction[i])}
        return flags

    return {
        "prediction": prediction,
        "q": q,
        "d_nearest": d0,
        "nearest_index": order[:, 0],
        "d": d,
        "probabilities": p,
        "q_rescaled": qr,
        "is_ood": np.floor(qr) <= 0,
        "effective_sample_size": n_hat,
        "d_lower": d_lower,
        "d_upper": d_upper,
        "probabilities_lower": p_lower,
        "probabilities_upper": p_upper,
        "q_rescaled_lower": qr_lower,
        "high_reliability": hr(qr, p),
        "high_reliability_lower": hr(qr_lower, p_lower),
    }

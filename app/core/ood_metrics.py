"""Separation metrics of OOD scores (mahalanobis.md §5), exact at every distinct threshold.

Inputs are outlier scores o (higher = more out-of-distribution, the API's convention); s = −o is the
ID confidence. Ties count against the detector: a threshold accepts every sample at or above it
("accept as ID iff s ≥ t"), and every distinct score is a threshold (no dropped ROC points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
PrIntegral = Literal["average_precision", "trapezoid"]


@dataclass(frozen=True)
class Curve:
    """Cumulative positives/negatives at or above each distinct score, highest score first."""

    tps: F64
    fps: F64
    positives: float
    negatives: float


def curve(positive: F64, negative: F64) -> Curve:
    """Counts of `positive` and `negative` scores ≥ each distinct threshold (descending)."""
    scores = np.concatenate([positive, negative])
    is_positive = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tps = np.cumsum(is_positive)[last_of_run]
    fps = (last_of_run + 1) - tps
    return Curve(tps, fps.astype(np.float64), float(len(positive)), float(len(negative)))


def auroc(outlier_in: F64, outlier_out: F64) -> float:
    """P(o_out > o_in) + ½·P(o_out = o_in) (Mann–Whitney; the same with either class positive)."""
    c = curve(outlier_out, outlier_in)
    tpr = np.r_[0.0, c.tps / c.positives]
    fpr = np.r_[0.0, c.fps / c.negatives]
    return float(np.trapezoid(tpr, fpr))


def aupr(positive: F64, negative: F64, integral: PrIntegral = "average_precision") -> float:
    """Area under precision–recall with `positive` as the positive class: scikit-learn's average
    precision Σ (R_k − R_{k−1}) P_k, or the trapezoid over precision_recall_curve's points from (0, 1)."""
    c = curve(positive, negative)
    precision = c.tps / (c.tps + c.fps)
    recall = c.tps / c.positives
    if integral == "average_precision":
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    full = int(np.searchsorted(c.tps, c.tps[-1]))  # scikit-learn stops at the first full-recall point
    return float(np.trapezoid(np.r_[1.0, precision[: full + 1]], np.r_[0.0, recall[: full + 1]]))


def vertex_at_tpr(positive: F64, negative: F64, target: float = 0.95) -> tuple[float, float]:
    """(FPR, TPR) at the highest threshold that keeps ≥ target of `positive`: the ROC vertex FPR@95 reads."""
    c = curve(positive, negative)
    first = int(np.argmax(c.tps / c.positives >= target - 1e-12))
    return float(c.fps[first] / c.negatives), float(c.tps[first] / c.positives)


def fpr_at_tpr(positive: F64, negative: F64, target: float = 0.95) -> float:
    """Share of `negative` at or above the highest threshold that keeps ≥ target of `positive`."""
    return vertex_at_tpr(positive, negative, target)[0]


def detection_error(outlier_in: F64, outlier_out: F64) -> float:
    """min over thresholds of ½(1 − TPR_in) + ½·FPR_out with equal priors (Lee et al.'s 1 − DTACC)."""
    c = curve(-outlier_in, -outlier_out)  # ID confidence s = −o, ID positive
    tpr = np.r_[0.0, c.tps / c.positives]
    fpr = np.r_[0.0, c.fps / c.negatives]
    return float(np.min(0.5 * (1 - tpr) + 0.5 * fpr))


def separation(outlier_in: F64, outlier_out: F64, integral: PrIntegral = "average_precision") -> dict[str, float]:
    """Every metric api.md names, from outlier scores of in- and out-of-distribution samples."""
    confidence_in, confidence_out = -outlier_in, -outlier_out
    return {
        "auroc": auroc(outlier_in, outlier_out),
        "aupr_in": aupr(confidence_in, confidence_out, integral),
        "aupr_out": aupr(outlier_out, outlier_in, integral),
        "fpr_at_95_tpr": fpr_at_tpr(confidence_in, confidence_out),
        "fpr_at_95_tpr_ood_positive": fpr_at_tpr(outlier_out, outlier_in),
        "detection_error": detection_error(outlier_in, outlier_out),
    }


def roc_points(outlier_in: F64, outlier_out: F64, points: int = 400) -> dict[str, list[float]]:
    """The ROC curve with in-distribution as the positive class (the convention of `fpr_at_95_tpr`):
    FPR = share of OOD samples accepted, TPR = share of ID samples kept, from (0, 0) to (1, 1). Thinned
    for drawing to the first vertex in each of `points` equal stretches of the curve's L1 length (≤ 2), so
    the line drawn departs from the exact staircase by at most 2 / `points` in |ΔFPR| + |ΔTPR|; a curve of
    fewer vertices is kept whole, and so are its ends."""
    c = curve(-outlier_in, -outlier_out)
    fpr = np.r_[0.0, c.fps / c.negatives]
    tpr = np.r_[0.0, c.tps / c.positives]
    if len(fpr) > points:
        length = np.r_[0.0, np.cumsum(np.abs(np.diff(fpr)) + np.abs(np.diff(tpr)))]
        steps = np.floor(length / (length[-1] / points))
        keep = np.r_[True, steps[1:] != steps[:-1]]
        keep[-1] = True
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def score_histograms(outlier_in: F64, outlier_out: F64, bins: int = 40, tail: float = 0.005) -> dict[str, list[float]]:
    """Counts of in- and out-of-distribution scores over shared edges spanning the pooled scores' `tail`
    and 1 − `tail` quantiles (scores beyond them are counted in the end bins, so one far outlier does not
    squash the rest into one bar)."""
    pooled = np.concatenate([outlier_in, outlier_out])
    low, high = np.quantile(pooled, [tail, 1 - tail])
    if not high > low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = [
        np.histogram(np.clip(s, low, high), edges)[0].astype(np.float64).tolist() for s in (outlier_in, outlier_out)
    ]
    return {"edges": edges.tolist(), "in": counts[0], "out": counts[1]}


def separation_plots(outlier_in: F64, outlier_out: F64) -> dict[str, Any]:
    """What the web report draws of a separation, kept with it so a page never re-reads the scores: the
    thinned ROC curve, the FPR@95 vertex, the score histograms, and how many non-finite scores were left
    out of them (empty when one side has no finite score)."""
    finite_in, finite_out = outlier_in[np.isfinite(outlier_in)], outlier_out[np.isfinite(outlier_out)]
    if not len(finite_in) or not len(finite_out):
        return {}
    fpr, tpr = vertex_at_tpr(-finite_in, -finite_out)
    return {
        "roc": roc_points(finite_in, finite_out),
        "at_95": {"fpr": fpr, "tpr": tpr},
        "histogram": score_histograms(finite_in, finite_out),
        "dropped": {"in": len(outlier_in) - len(finite_in), "out": len(outlier_out) - len(finite_out)},
    }

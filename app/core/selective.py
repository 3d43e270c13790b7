"""Selective prediction: area under the risk–coverage curve (Geifman & El-Yaniv 2017; §4.1)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def aurc(confidence: F64, correct: F64, weight: F64) -> float:
    """AURC = mean over k of the selective risk r_k of the k most confident rows (the spec's 'mean'
    convention, not TorchUncertainty's trapezoid). Rows are sorted stably by (−confidence, row index);
    with sample weights, r_k = Σ_{j≤k} w_j(1 − a_j) / Σ_{j≤k} w_j and the mean is w-weighted."""
    order = np.argsort(-confidence, kind="stable")
    w = weight[order]
    cum_w = np.cumsum(w)
    risk = np.cumsum(w * (1.0 - correct[order])) / np.where(cum_w > 0, cum_w, 1.0)
    return float(np.sum(w * risk) / cum_w[-1])

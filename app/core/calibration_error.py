"""Finalize steps of the calibration-error metrics: merged bin sums or kept rows -> one number.

These run once per evaluation on merged states (B bins, or the rows a sort-based metric keeps), in
float64. Conventions are pinned by `shared/specs/api.md`: a confidence p is in uniform bin
min(floor(p·B), B−1); ECE is the count-weighted mean of |accuracy − confidence| over non-empty bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Norm = Literal["l1", "l2", "max"]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BinStats:
    """Per-bin weighted sums: count (Σw), confidence (Σw·f) and accuracy (Σw·a)."""

    count: F64
    confidence: F64
    accuracy: F64


def calibration_gap(stats: BinStats, norm: Norm) -> float:
    """ECE (l1), RMS calibration error (l2) or MCE (max) over non-empty bins (Naeini et al. 2015; §4.1)."""
    filled = stats.count > 0
    count = stats.count[filled]
    if count.size == 0:
        return 0.0
    gap = np.abs(stats.accuracy[filled] / count - stats.confidence[filled] / count)
    share = count / count.sum()
    if norm == "l1":
        return float(np.sum(share * gap))
    if norm == "l2":
        return float(np.sqrt(np.sum(share * gap**2)))
    return float(gap.max())


def quantile_bin_stats(confidence: F64, correct: F64, weight: F64, bins: int) -> BinStats:
    """Equal-mass bins: confidences sorted ascending (ties by row order) and split into `bins` groups
    whose sizes differ by at most one, larger groups first (torch.tensor_split); empty groups are dropped."""
    order = np.argsort(confidence, kind="stable")
    groups = np.array_split(order, bins)
    sums = [
        (weight[g].sum(), (weight[g] * confidence[g]).sum(), (weight[g] * correct[g]).sum()) for g in groups if g.size
    ]
    count, conf, acc = (np.asarray(col, dtype=np.float64) for col in zip(*sums, strict=True))
    return BinStats(count, conf, acc)


def smooth_ece(confidence: F64, correct: F64, weight: F64, grid_size: int = 2049, tol: float = 1e-7) -> float:
    """Smooth ECE (Błasiok & Nakkiran 2023, §4.1): smECE_σ = ∫₀¹ |Σ_i w_i K_σ(t, f_i)(a_i − f_i)| dt / Σw
    with a Gaussian kernel reflected at 0 and 1, at the fixed point σ* = smECE_σ* (bisection on [0, 1]).

    Residuals are deposited on a uniform grid by linear interpolation (as relplot does). A Gaussian
    reflected at both ends of [0, 1] is a circular convolution of the even extension of the residuals
    (period 2) with a wrapped Gaussian, done by FFT, so each bisection step costs O(G log G) whatever N.
    relplot discretises differently; the two agree to ~1e-3 (the spec's tolerance is 2e-3).
    """
    total = weight.sum()
    intervals = grid_size - 1
    pos = np.clip(confidence, 0.0, 1.0) * intervals
    lo = np.minimum(np.floor(pos).astype(np.int64), intervals - 1)
    frac = pos - lo
    residual = weight * (correct - confidence) / total
    mass = np.bincount(lo, residual * (1 - frac), grid_size) + np.bincount(lo + 1, residual * frac, grid_size)
    period = 2 * intervals
    extended = np.concatenate([mass, mass[-2:0:-1]])  # even extension: a mass at c has an image at −c ≡ 2 − c
    spectrum = np.fft.rfft(extended)
    offsets = np.arange(period) / intervals  # distance in [0, 2) along the circle of circumference 2
    grid = np.linspace(0.0, 1.0, grid_size)

    def sm_ece(sigma: float) -> float:
        wrapped = sum(np.exp(-0.5 * ((offsets + 2 * n) / sigma) ** 2) for n in range(-3, 3))
        kernel = wrapped / (sigma * np.sqrt(2 * np.pi)) / intervals  # density × grid spacing
        smoothed = np.fft.irfft(spectrum * np.fft.rfft(kernel), period)[:grid_size] * intervals
        return float(np.trapezoid(np.abs(smoothed), grid))

    low, high = 0.0, 1.0
    while high - low > tol:
        mid = 0.5 * (low + high)
        if sm_ece(mid) > mid:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)

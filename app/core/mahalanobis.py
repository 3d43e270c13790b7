"""Mahalanobis OOD detectors (Lee et al. 2018; relative: Ren et al. 2021), mahalanobis.md §2–3, §7.

Fit: float64 sufficient statistics (row count, global mean and centred scatter merged Chan-style, per-
class counts and sums), so a fit streams over chunks in O(D² + C·D) memory and a chunked fit equals
the one-shot one. The tied within-class scatter is W = T − Σ_c n_c (μ_c − μ̄)(μ_c − μ̄)ᵀ.
Score: centre on the global mean, whiten once (AᵀA = Σ⁻¹), then d_c² = ‖z‖² − 2 z·m_c + ‖m_c‖² by
matrix products in ONNX, clamped at 0 (§7); outlier score min_c d_c² (higher = more OOD), nearest class
= argmin (ties → lowest index); relative Mahalanobis subtracts the background distance d_0².
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.errors import InputError
from app.core.graph_context import ints

F64 = npt.NDArray[np.float64]
Shrinkage = Literal["ledoit_wolf", "oas"] | float | None


@dataclass
class GaussianStats:
    """Mergeable sufficient statistics of labelled features, all float64."""

    classes: int
    dim: int
    n: float = 0.0
    mean: F64 = field(default_factory=lambda: np.zeros(0))
    scatter: F64 = field(default_factory=lambda: np.zeros((0, 0)))  # Σ (x − x̄)(x − x̄)ᵀ
    class_counts: F64 = field(default_factory=lambda: np.zeros(0))
    class_sums: F64 = field(default_factory=lambda: np.zeros((0, 0)))
    class_scatter: F64 | None = None  # [C, D, D] centred per class, kept only for per-class covariances

    def __post_init__(self) -> None:
        if self.mean.size == 0:
            self.mean = np.zeros(self.dim)
            self.scatter = np.zeros((self.dim, self.dim))
            self.class_counts = np.zeros(self.classes)
            self.class_sums = np.zeros((self.classes, self.dim))

    @classmethod
    def of(cls, features: np.ndarray, labels: np.ndarray, classes: int, per_class: bool = False) -> GaussianStats:
        with np.errstate(over="ignore", invalid="ignore"):  # moments that overflow are refused by `eigen`
            return cls._of(features, labels, classes, per_class)

    @classmethod
    def _of(cls, features: np.ndarray, labels: np.ndarray, classes: int, per_class: bool) -> GaussianStats:
        x = features.astype(np.float64)
        mean = x.mean(0)
        centred = x - mean
        counts = np.bincount(labels, minlength=classes).astype(np.float64)
        sums = np.zeros((classes, x.shape[1]))
        np.add.at(sums, labels, x)
        scatter = None
        if per_class:
            scatter = np.zeros((classes, x.shape[1], x.shape[1]))
            for c in np.flatnonzero(counts):
                rows = x[labels == c]
                rows = rows - rows.mean(0)
                scatter[c] = rows.T @ rows
        return cls(classes, x.shape[1], float(len(x)), mean, centred.T @ centred, counts, sums, scatter)

    def widened(self, classes: int) -> GaussianStats:
        """The same statistics over `classes` ≥ self.classes classes (the new ones without rows): a chunk
        knows only the classes it has seen."""
        extra = classes - self.classes
        if extra == 0:
            return self
        class_scatter = None
        if self.class_scatter is not None:
            class_scatter = np.concatenate([self.class_scatter, np.zeros((extra, self.dim, self.dim))])
        return GaussianStats(
            classes,
            self.dim,
            self.n,
            self.mean,
            self.scatter,
            np.concatenate([self.class_counts, np.zeros(extra)]),
            np.concatenate([self.class_sums, np.zeros((extra, self.dim))]),
            class_scatter,
        )

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Chan et al.'s pairwise update: exact for disjoint row sets, in any order."""
        if self.classes != other.classes:
            classes = max(self.classes, other.classes)
            return self.widened(classes).merge(other.widened(classes))
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        class_scatter = None
        if self.class_scatter is not None and other.class_scatter is not None:  # Chan's update per class
            na, nb = self.class_counts, other.class_counts
            mean_a = self.class_sums / np.maximum(na, 1.0)[:, None]
            mean_b = other.class_sums / np.maximum(nb, 1.0)[:, None]
            shift = np.where(((na > 0) & (nb > 0))[:, None], mean_b - mean_a, 0.0)
            weight = na * nb / np.maximum(na + nb, 1.0)
            class_scatter = (
                self.class_scatter + other.class_scatter + np.einsum("ci,cj->cij", shift, shift) * weight[:, None, None]
            )
        return GaussianStats(
            self.classes,
            self.dim,
            n,
            self.mean + delta * (other.n / n),
            scatter,
            self.class_counts + other.class_counts,
            self.class_sums + other.class_sums,
            class_scatter,
        )

    @property
    def class_means(self) -> F64:
        means: F64 = self.class_sums / self.class_counts[:, None]
        return means

    def within_scatter(self) -> F64:
        offsets = self.class_means - self.mean
        with np.errstate(over="ignore", invalid="ignore"):  # refused by `eigen` when not finite
            within: F64 = self.scatter - (offsets.T * self.class_counts) @ offsets
        return within


def shrunk(covariance: F64, shrinkage: Shrinkage, n: float, fourth_moment: float | None = None) -> F64:
    """(1 − α)Σ + α·tr(Σ)/D·I with α given, or from OAS (Chen et al. 2010) or Ledoit–Wolf as
    scikit-learn computes them on centred data (§3.5); LW needs Σ_i ‖x_i − μ_{y_i}‖⁴."""
    d = covariance.shape[0]
    mu = np.trace(covariance) / d
    if shrinkage is None:
        return covariance
    if shrinkage == "oas":
        a = np.mean(covariance**2)
        num = a + mu**2
        den = (n + 1.0) * (a - mu**2 / d)
        alpha = 1.0 if den == 0 else min(num / den, 1.0)
    elif shrinkage == "ledoit_wolf":
        assert fourth_moment is not None
        delta = np.sum((covariance - mu * np.eye(d)) ** 2) / d
        beta = (fourth_moment / n - np.sum(covariance**2)) / (d * n)
        alpha = 0.0 if delta == 0 else min(beta, delta) / delta
    else:
        alpha = float(shrinkage)
    out: F64 = (1.0 - alpha) * covariance + alpha * mu * np.eye(d)
    return out


def eigen(covariance: F64) -> tuple[F64, F64]:
    """eigh of a covariance whose entries are finite: features beyond ~1e154 overflow their second
    moments in float64 (LAPACK would fail on the inf/NaN), which is the caller's data to rescale."""
    if not np.isfinite(covariance).all():
        raise InputError("features", "values are too large: their second moments overflow float64; rescale them")
    values, vectors = np.linalg.eigh(covariance)
    return values, vectors


def whitening(covariance: F64, inverse: Literal["pinv", "solve"]) -> F64:
    """A with AᵀA = Σ⁻¹: pinv from eigh with scipy's pinvh cut-off (the reference's choice), or the
    inverse Cholesky factor, which refuses a singular Σ with a clear error instead of amplifying noise."""
    values, vectors = eigen(covariance)
    cutoff = values.max() * covariance.shape[0] * np.finfo(np.float64).eps
    if inverse == "solve":
        if values.min() <= cutoff:
            raise InputError(
                "params.inverse",
                f"the covariance is singular (smallest eigenvalue {values.min():.3g}); use inverse 'pinv', "
                "a 'ridge' or 'shrinkage'",
            )
        a: F64 = np.linalg.inv(np.linalg.cholesky(covariance))
        return a
    scale = np.where(values > cutoff, 1.0 / np.sqrt(np.where(values > cutoff, values, 1.0)), 0.0)
    a = (vectors * scale).T
    return a


@dataclass(frozen=True)
class MahalanobisModel:
    """Everything scoring needs: the global mean, the whitening, the whitened class means, and for the
    relative variant the background whitening."""

    mean: F64
    whiten: F64  # [D, D]
    means: F64  # [C, D] whitened, centred on the global mean
    background: F64 | None = None  # [D, D] whitening of the label-free covariance
    normalize: bool = False
    log_priors: F64 | None = None  # [C] log π_c (class frequencies), for `logits_fragment`
    log_det: float | None = None  # log|Σ| (the pseudo-determinant where `pinv` cut eigenvalues)

    @property
    def dim(self) -> int:
        return int(self.mean.size)

    def _distances(self, features: Var) -> tuple[Var, Var]:
        """(d_c² [N, C], the features centred on the global mean)."""
        c = _constants(features)
        centred = op.sub(_unit(features, c) if self.normalize else features, c(self.mean))
        z = op.matmul(centred, c(self.whiten.T))
        squared = op.reduce_sum(op.mul(z, z), ints(-1), keepdims=1)
        cross = op.matmul(z, c(self.means.T))
        d2 = op.clip(op.add(op.sub(squared, op.mul(c(2.0), cross)), c(np.sum(self.means**2, axis=1))), c(0.0), None)
        return d2, centred

    def fragment(self, features: Var) -> tuple[Var, Var]:
        """`scores` = min_c d_c² (minus d_0² when relative) and `nearest_class` = argmin_c d_c²."""
        c = _constants(features)
        d2, centred = self._distances(features)
        score = op.reduce_min(d2, ints(-1), keepdims=0)
        if self.background is not None:
            zb = op.matmul(centred, c(self.background.T))
            score = op.sub(score, op.reduce_sum(op.mul(zb, zb), ints(-1), keepdims=0))
        return score, op.arg_min(d2, axis=-1, keepdims=0)

    def logits_fragment(self, features: Var) -> Var:
        """The generative classifier's class scores (LDA): log π_c + log N(x; μ_c, Σ) =
        log π_c − ½ d_c² − ½ log|Σ| − (D/2) log 2π, [N, C]."""
        assert self.log_priors is not None and self.log_det is not None
        c = _constants(features)
        d2, _ = self._distances(features)
        constant = -0.5 * self.log_det - 0.5 * self.dim * np.log(2 * np.pi)
        return op.add(op.mul(c(-0.5), d2), c(self.log_priors + constant))


def fit(
    stats: GaussianStats,
    *,
    shrinkage: Shrinkage = None,
    ridge: float = 0.0,
    inverse: Literal["pinv", "solve"] = "pinv",
    relative: bool = False,
    normalize: bool = False,
    fourth_moment: float | None = None,
) -> MahalanobisModel:
    covariance = stats.within_scatter() / stats.n  # tied MLE, divided by N
    covariance = shrunk(covariance, shrinkage, stats.n, fourth_moment) + ridge * np.eye(stats.dim)
    a = whitening(covariance, inverse)
    means = (stats.class_means - stats.mean) @ a.T
    background = None
    if relative:
        background = whitening(stats.scatter / stats.n + ridge * np.eye(stats.dim), inverse)
    values = np.linalg.eigvalsh(covariance)
    kept = values[values > values.max() * covariance.shape[0] * np.finfo(np.float64).eps]
    with np.errstate(divide="ignore"):
        log_priors = np.log(stats.class_counts / stats.n)
    return MahalanobisModel(stats.mean, a, means, background, normalize, log_priors, float(np.sum(np.log(kept))))


class ScoringModel(Protocol):
    """A fitted detector as a graph fragment: features [N, D] -> (scores [N], nearest_class [N])."""

    @property
    def dim(self) -> int: ...

    def fragment(self, features: Var) -> tuple[Var, Var]: ...


def scoring_graph(model: ScoringModel, dtype: np.dtype) -> onnx.ModelProto:
    """The fragment as a model: input `features` [N, D] -> outputs `scores`, `nearest_class`."""
    features = argument(Tensor(dtype, ("N", model.dim)))
    scores, nearest = model.fragment(features)
    return build({"features": features}, {"scores": scores, "nearest_class": nearest})


def _unit(x: Var, c: Callable[[object], Var]) -> Var:
    """Rows L2-normalised (norms floored at 1e-12), as the fit normalised them."""
    norm = op.sqrt(op.reduce_sum(op.mul(x, x), ints(-1), keepdims=1))
    return op.div(x, op.clip(norm, c(1e-12), None))


def _constants(features: Var) -> Callable[[object], Var]:
    dtype = features.unwrap_tensor().dtype

    def c(value: object) -> Var:
        return op.constant(value=np.asarray(value, dtype=dtype))

    return c


@dataclass(frozen=True)
class VimModel:
    """ViM (Wang et al. 2022, mahalanobis.md §6): origin u = −W⁺b, residual basis R = eigenvectors of
    cov(x − u) (centred at u) beyond the top `dim`, α = mean max-logit / mean ‖Rᵀ(x − u)‖ on fit data."""

    weight: F64  # [C, D]
    bias: F64  # [C]
    origin: F64  # [D]
    residual: F64  # [D, D − dim]
    alpha: float

    @property
    def dim(self) -> int:
        return int(self.origin.size)

    def fragment(self, features: Var) -> tuple[Var, Var]:
        """`scores` = α‖Rᵀ(x − u)‖ − logsumexp(Wx + b) (the negated ViM score: higher = more OOD) and
        `nearest_class` = argmax of the logits."""
        c = _constants(features)
        logits = op.add(op.matmul(features, c(self.weight.T)), c(self.bias))
        projected = op.matmul(op.sub(features, c(self.origin)), c(self.residual))
        norm = op.sqrt(op.reduce_sum(op.mul(projected, projected), ints(-1), keepdims=0))
        energy = op.reduce_log_sum_exp(logits, ints(-1), keepdims=0)
        return op.sub(op.mul(c(self.alpha), norm), energy), op.arg_max(logits, axis=-1, keepdims=0)


def fit_vim(features: F64, weight: F64, bias: F64, dim: int) -> VimModel:
    origin = -np.linalg.pinv(weight) @ bias
    centred = features - origin
    values, vectors = np.linalg.eigh(centred.T @ centred / len(features))
    residual = vectors[:, np.argsort(values)[::-1][dim:]]
    max_logit = (features @ weight.T + bias).max(axis=1)
    norms = np.linalg.norm(centred @ residual, axis=1)
    return VimModel(weight, bias, origin, residual, float(max_logit.mean() / norms.mean()))


@dataclass(frozen=True)
class PerClassModel:
    """Untied Gaussians (mahalanobis.md §3.2): per class a whitening A_c (A_cᵀA_c = Σ_c⁻¹), its mean, and
    the offset log|Σ_c| − 2 log π_c, so that min_c [d_c² + offset_c] = −2 max_c log(π_c p(x|c)) + const."""

    whiten: F64  # [C, D, D]
    means: F64  # [C, D]
    offsets: F64  # [C]
    normalize: bool = False

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def _terms(self, features: Var) -> Var:
        """d_c² + log|Σ_c| − 2 log π_c, [N, C]. All classes in one product: x [N, D] @ [D, C·D], minus the
        whitened means, squared and summed per class."""
        c = _constants(features)
        classes, dim = self.means.shape
        stacked = np.concatenate([w.T for w in self.whiten], axis=1)  # [D, C·D]
        shifts = np.einsum("cij,cj->ci", self.whiten, self.means).reshape(-1)  # A_c μ_c, [C·D]
        x = _unit(features, c) if self.normalize else features
        z = op.sub(op.matmul(x, c(stacked)), c(shifts))
        per_class = op.reshape(z, ints(-1, classes, dim))
        return op.add(op.reduce_sum(op.mul(per_class, per_class), ints(-1), keepdims=0), c(self.offsets))

    def fragment(self, features: Var) -> tuple[Var, Var]:
        """`scores` = min_c [‖A_c(x − μ_c)‖² + log|Σ_c| − 2 log π_c], `nearest_class` = argmin."""
        d2 = self._terms(features)
        return op.reduce_min(d2, ints(-1), keepdims=0), op.arg_min(d2, axis=-1, keepdims=0)

    def logits_fragment(self, features: Var) -> Var:
        """The generative classifier's class scores (QDA; Gaussian naive Bayes when the Σ_c are diagonal):
        log π_c + log N(x; μ_c, Σ_c) = −½ [d_c² + log|Σ_c| − 2 log π_c] − (D/2) log 2π, [N, C]."""
        c = _constants(features)
        return op.add(op.mul(c(-0.5), self._terms(features)), c(-0.5 * self.dim * np.log(2 * np.pi)))


def fit_per_class(
    stats: GaussianStats,
    shrinkage: Literal["oas"] | float | None = None,
    ridge: float = 0.0,
    normalize: bool = False,
    diagonal: bool = False,
) -> PerClassModel:
    """Σ_c = W_c / n_c (MLE per class; its diagonal only with `diagonal`: Gaussian naive Bayes),
    optionally shrunk and ridged; every Σ_c must be positive definite (the log-determinant is part of the
    score), so a class with too few rows is refused."""
    assert stats.class_scatter is not None
    whitens, offsets = [], []
    for c in range(stats.classes):
        n_c = stats.class_counts[c]
        if n_c < 2:
            raise InputError("labels", f"class {c} has {int(n_c)} row(s); a per-class covariance needs at least 2")
        covariance = stats.class_scatter[c] / n_c
        if diagonal:
            covariance = np.diag(np.diag(covariance))
        covariance = shrunk(covariance, shrinkage, n_c) + ridge * np.eye(stats.dim)
        values, vectors = eigen(covariance)
        if values.min() <= values.max() * stats.dim * np.finfo(np.float64).eps:
            raise InputError(
                "params.covariance",
                f"class {c}'s covariance is singular ({int(n_c)} rows, D = "
                f"{stats.dim}); add a ridge or shrinkage, or use covariance 'tied'",
            )
        whitens.append((vectors / np.sqrt(values)).T)
        offsets.append(float(np.sum(np.log(values)) - 2.0 * np.log(n_c / stats.n)))
    return PerClassModel(np.stack(whitens), stats.class_means, np.asarray(offsets), normalize)

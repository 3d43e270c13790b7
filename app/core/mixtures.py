"""Class-conditional Gaussian mixtures (HVCM-style OOD head; api.md, "Detectors", `class_gmm`): one mixture
per class fitted by EM with scikit-learn's `GaussianMixture` (its k-means initialisation, `random_state`
= seed), scored in ONNX. Every component, whatever its covariance type, becomes a whitening matrix (the
transposed Cholesky factor of its precision, as scikit-learn's `precisions_cholesky_`), a mean and an
offset, so one product scores all C·m components at once (`PerClassModel._terms`), as the per-class
Gaussian detector does; a log-sum-exp over each class's components gives log p_c(x).

EM is not a mergeable statistic: the fit holds the features (float64, N × D) and, per class, scikit-learn's
responsibilities (n_c × m), so it is bounded by the request body or CALIPER_MAX_SOURCE_BYTES.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import spox.opset.ai.onnx.v21 as op
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from spox import Var

from app.core.errors import InputError
from app.core.graph_context import ints
from app.core.mahalanobis import PerClassModel

F64 = npt.NDArray[np.float64]
CovarianceType = Literal["full", "diag", "tied", "spherical"]
LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class ClassGmmModel:
    """C mixtures of m components each: `components` holds the C·m Gaussians class by class, its offsets
    −2 (log det P_k + log w_k) (P_k the precision's Cholesky factor, w_k the weight within the class), so
    that −½ (d_k² + offset_k) − (D/2) log 2π = log w_k N(x; μ_k, Σ_k)."""

    components: PerClassModel
    per_class: int
    log_priors: F64  # [C], log π_c = log n_c / N

    @property
    def dim(self) -> int:
        return self.components.dim

    @property
    def classes(self) -> int:
        return int(self.log_priors.shape[0])

    def class_log_densities(self, features: Var) -> Var:
        """log p_c(x) = log Σ_k w_ck N(x; μ_ck, Σ_ck), [N, C]: a max-shifted log-sum-exp per class."""
        dtype = features.unwrap_tensor().dtype
        terms = self.components._terms(features)  # d_k² + offset_k, [N, C·m]
        weighted = op.sub(
            op.mul(terms, op.constant(value=np.asarray(-0.5, dtype))),
            op.constant(value=np.asarray(0.5 * self.dim * LOG_2PI, dtype)),
        )
        grouped = op.reshape(weighted, ints(-1, self.classes, self.per_class))
        top = op.reduce_max(grouped, ints(-1), keepdims=1)
        summed = op.reduce_sum(op.exp(op.sub(grouped, top)), ints(-1), keepdims=1)
        return op.squeeze(op.add(top, op.log(summed)), ints(-1))

    def fragment(self, features: Var) -> tuple[Var, Var]:
        """`scores` = −max_c log p_c(x) (higher = more out-of-distribution), `nearest_class` = its argmax."""
        densities = self.class_log_densities(features)
        return op.neg(op.reduce_max(densities, ints(-1), keepdims=0)), op.arg_max(densities, axis=-1, keepdims=0)

    def logits_fragment(self, features: Var) -> Var:
        """The generative classifier's class scores log π_c + log p_c(x), [N, C]."""
        dtype = features.unwrap_tensor().dtype
        return op.add(self.class_log_densities(features), op.constant(value=self.log_priors.astype(dtype)))


def _precision_factors(mixture: GaussianMixture, dim: int) -> F64:
    """scikit-learn's precisions_cholesky_ of any covariance type as [m, D, D] factors P_k (Σ_k⁻¹ = P_k P_kᵀ)."""
    factors = np.asarray(mixture.precisions_cholesky_, dtype=np.float64)
    m = mixture.n_components
    if mixture.covariance_type == "full":
        return factors
    if mixture.covariance_type == "tied":
        return np.broadcast_to(factors, (m, dim, dim)).copy()
    if mixture.covariance_type == "diag":
        return np.stack([np.diag(row) for row in factors])
    return factors[:, None, None] * np.eye(dim)[None]


def fit_class_gmm(
    features: F64,
    labels: np.ndarray,
    classes: int,
    components: int,
    covariance_type: CovarianceType,
    reg_covar: float,
    max_iter: int,
    seed: int,
    normalize: bool = False,
) -> tuple[ClassGmmModel, dict[str, object]]:
    """One `GaussianMixture` per class on its rows (L2-normalised first with `normalize`, as scoring does);
    the model and what the fit reports (EM iterations and whether each class's EM converged)."""
    counts = np.bincount(labels, minlength=classes)
    short = np.flatnonzero(counts < components)
    if short.size:
        c = int(short[0])
        raise InputError("params.components", f"{components} components exceed class {c}'s {int(counts[c])} row(s)")
    if normalize:
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    dim = features.shape[1]
    whiten, means, offsets, iterations, converged = [], [], [], [], []
    for c in range(classes):
        mixture = GaussianMixture(
            n_components=components,
            covariance_type=covariance_type,
            reg_covar=reg_covar,
            max_iter=max_iter,
            random_state=seed,
        )
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the fit report says so (`converged`)
            mixture.fit(features[labels == c])
        factors = _precision_factors(mixture, dim)
        log_det = np.log(np.diagonal(factors, axis1=1, axis2=2)).sum(axis=1)
        whiten.append(np.transpose(factors, (0, 2, 1)))
        means.append(mixture.means_)
        offsets.append(-2.0 * (log_det + np.log(mixture.weights_)))
        iterations.append(int(mixture.n_iter_))
        converged.append(bool(mixture.converged_))
    model = ClassGmmModel(
        PerClassModel(np.concatenate(whiten), np.concatenate(means), np.concatenate(offsets), normalize),
        components,
        np.log(counts / counts.sum()),
    )
    return model, {"iterations": iterations, "converged": converged}

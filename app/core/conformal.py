"""Split conformal prediction sets (api.md, "Guarantees"; Vovk et al. 2005; Angelopoulos & Bates 2021).

Scores s(x, y), higher = less conforming, in float64 from the probabilities p: classes ranked by
(−p_j, j) (ONNX TopK breaks ties by the lower index), o(y) ∈ 1..C the rank of y;
`lac` 1 − p_y (Sadinle et al. 2019); `aps` Σ_{rank ≤ o(y)} p_j, non-randomised (Romano et al. 2020);
`raps` aps + λ·max(0, o(y) − k_reg) (Angelopoulos et al. 2021, non-randomised); `top_k` o(y).
q̂ is the k-th smallest calibration score, k = ⌈(n + 1)(1 − α)⌉ (+∞ when k > n); Mondrian: the same
per class over its own rows (Vovk 2012). The set C(x) = {y : s(x, y) ≤ q̂ (q̂_y)}.

The scores of every class come from one sort per row: in sorted order position r (0-based) holds
1 − p, the running sum of p, that sum + λ·max(0, r + 1 − k_reg), or r + 1; membership is decided in
sorted order and scattered back to class order. `scores_fragment` gives the score of the given label
(the fit), `set_fragment` the set (predict, the standalone graph and the export run the same fragment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.fitted_state import HyperParameters
from app.core.graph_context import ints, scalar
from app.core.graphrun import mapped, mapped_outputs
from app.core.probability_inputs import Probabilities
from app.core.runtime import SessionCache

Method = Literal["lac", "aps", "raps", "top_k"]
METHODS: tuple[Method, ...] = ("lac", "aps", "raps", "top_k")
K_TOLERANCE = 1e-9  # api.md: k = ceil((n + 1)(1 − α) − 1e-9), so a whole product is not rounded up


@dataclass(frozen=True)
class ConformalScore:
    """A nonconformity score and its parameters (`lam`, `k_reg`: RAPS' regularisation)."""

    method: Method
    lam: float = 0.0
    k_reg: int = 0

    def sorted_scores(self, p: Var) -> tuple[Var, Var]:
        """(scores in each row's sorted order [N, C] float64, the class at each position [N, C] int64)."""
        p = op.cast(p, to=np.float64)
        classes = op.slice(op.shape(p), ints(1), ints(2))
        ordered, order = op.top_k(p, classes, axis=-1, largest=1, sorted=1)
        if self.method == "lac":
            return op.sub(scalar(1.0, np.float64), ordered), order
        ranks = op.cast(op.add(_positions(p), scalar(1, np.int64)), to=np.float64)  # o = r + 1, [1, C]
        if self.method == "top_k":
            return op.expand(ranks, op.shape(p)), order
        running = op.cum_sum(ordered, scalar(1, np.int64))
        if self.method == "aps":
            return running, order
        excess = op.max([op.sub(ranks, scalar(self.k_reg, np.float64)), scalar(0.0, np.float64)])
        return op.add(running, op.mul(scalar(self.lam, np.float64), excess)), order

    def scores_fragment(self, p: Var, labels: Var) -> Var:
        """s(x_i, y_i) [N] float64 of probabilities [N, C] and labels [N] (int64)."""
        if self.method == "lac":  # no ranks needed: 1 − p_y, without the sort
            at_label = op.gather_elements(op.cast(p, to=np.float64), op.unsqueeze(labels, ints(1)), axis=1)
            return op.sub(scalar(1.0, np.float64), op.squeeze(at_label, ints(1)))
        scores, order = self.sorted_scores(p)
        at_label = op.cast(op.equal(order, op.unsqueeze(labels, ints(1))), to=np.float64)  # one position per row
        return op.reduce_sum(op.mul(scores, at_label), ints(1), keepdims=0)

    def set_fragment(self, p: Var, quantiles: np.ndarray) -> tuple[Var, Var]:
        """(prediction_set [N, C] bool in class order, set_size [N] int64): s(x, y) ≤ q̂, or ≤ q̂_y with one
        quantile per class (Mondrian); +∞ admits every class."""
        q = op.constant(value=np.asarray(quantiles, np.float64))
        if self.method == "lac":  # in class order already: 1 − p_y ≤ q̂ (q̂_y broadcast along the classes)
            member = op.less_or_equal(op.sub(scalar(1.0, np.float64), op.cast(p, to=np.float64)), q)
            return member, op.reduce_sum(op.cast(member, to=np.int64), ints(1), keepdims=0)
        scores, order = self.sorted_scores(p)
        threshold = op.gather(q, order) if quantiles.ndim == 1 else q  # q̂ of the class at each position
        member = op.cast(op.less_or_equal(scores, threshold), to=np.int64)
        in_class_order = op.scatter_elements(op.mul(member, scalar(0, np.int64)), order, member, axis=1)
        return op.cast(in_class_order, to=np.bool_), op.reduce_sum(in_class_order, ints(1), keepdims=0)


def _positions(p: Var) -> Var:
    """[1, C] int64: 0 … C − 1."""
    classes = op.squeeze(op.slice(op.shape(p), ints(1), ints(2)), ints(0))
    return op.unsqueeze(op.range(scalar(0, np.int64), classes, scalar(1, np.int64)), ints(0))


def quantile_rank(n: int, alpha: float) -> int:
    """k = ⌈(n + 1)(1 − α)⌉ as api.md computes it (1-based; k > n means q̂ = +∞)."""
    return math.ceil((n + 1) * (1 - alpha) - K_TOLERANCE)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """q̂: the k-th smallest of the calibration scores, +∞ when k > n (none: always). k < 1 (α within
    1e-9·(n + 1) of 1) takes the smallest: a set at least as large as the guarantee needs."""
    k = quantile_rank(len(scores), alpha)
    if k > len(scores):
        return math.inf
    k = max(k, 1)
    return float(np.partition(scores, k - 1)[k - 1])


def class_quantiles(scores: np.ndarray, labels: np.ndarray, classes: int, alpha: float) -> np.ndarray:
    """Mondrian q̂_c over the rows of each class c (+∞ for a class with too few rows, none included)."""
    return np.array([conformal_quantile(scores[labels == c], alpha) for c in range(classes)], np.float64)


class ConformalPredictor(HyperParameters):
    """Split conformal prediction sets: hyper-parameters in (api.md's `params`), `fit` on calibration
    rows sets `quantiles_` (q̂ as a 0-d array, or [C] under Mondrian; +∞ where k > n), `n_calibration_`
    and `classes_`; `predict` gives the sets. Scores run as ONNX graphs over chunks (cached sessions)."""

    def __init__(
        self, method: Method = "lac", alpha: float = 0.1, mondrian: bool = False, lam: float = 0.01, k_reg: int = 1
    ) -> None:
        self.method, self.alpha, self.mondrian, self.lam, self.k_reg = method, alpha, mondrian, lam, k_reg

    @property
    def score(self) -> ConformalScore:
        return ConformalScore(self.method, self.lam, self.k_reg)

    def fit(
        self, inputs: np.ndarray, labels: np.ndarray, given: Probabilities, cache: SessionCache | None = None
    ) -> Self:
        """Calibration rows [N, C] (`given.name`) and labels [N] in 0..C−1, already validated."""
        dtype, score = np.dtype(inputs.dtype), self.score
        signature = f"conformal-scores:{score}:{given.key}:{dtype}"

        def graph() -> onnx.ModelProto:
            x, y = argument(Tensor(dtype, ("N", "C"))), argument(Tensor(np.int64, ("N",)))
            return build({given.name: x, "labels": y}, {"scores": score.scores_fragment(given.fragment(x), y)})

        rows = {given.name: inputs, "labels": labels.astype(np.int64)}
        scores = mapped(signature, graph, rows, cache)
        self.classes_ = int(inputs.shape[-1])
        self.n_calibration_ = len(labels)
        if self.mondrian:
            self.quantiles_ = class_quantiles(scores, labels, self.classes_, self.alpha)
        else:
            self.quantiles_ = np.asarray(conformal_quantile(scores, self.alpha), np.float64)
        return self

    def set_fragment(self, probabilities: Var) -> tuple[Var, Var]:
        """(prediction_set [N, C] bool, set_size [N] int64) of probabilities [N, C]."""
        return self.score.set_fragment(probabilities, self.quantiles_)

    def graph(self, given: Probabilities, dtype: np.dtype) -> onnx.ModelProto:
        """Input `given.name` [N, C] -> outputs `prediction_set`, `set_size` (the standalone export)."""
        x = argument(Tensor(dtype, ("N", "C")))
        sets, sizes = self.set_fragment(given.fragment(x))
        return build({given.name: x}, {"prediction_set": sets, "set_size": sizes})

    def predict(
        self, inputs: np.ndarray, given: Probabilities, key: str, cache: SessionCache | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(prediction_set [N, C] bool, set_size [N]) of rows [N, C], chunk by chunk (session `key`)."""
        dtype = np.dtype(inputs.dtype)
        out = mapped_outputs(f"{key}:{given.key}:{dtype}", lambda: self.graph(given, dtype), {given.name: inputs},
                             cache=cache)  # fmt: skip
        return out["prediction_set"], out["set_size"]


@dataclass(frozen=True)
class Coverage:
    """How labelled rows fared: the share whose set holds the label, the mean set size, coverage per
    class (NaN for a class without rows) and per set size (over the sizes that occur)."""

    coverage: float
    mean_set_size: float
    class_coverage: np.ndarray
    size_stratified: dict[int, float]

    @classmethod
    def of(cls, sets: np.ndarray, sizes: np.ndarray, labels: np.ndarray) -> Coverage:
        covered = sets[np.arange(len(labels)), labels]
        classes = sets.shape[1]
        rows = np.bincount(labels, minlength=classes)
        hits = np.bincount(labels, weights=covered, minlength=classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(rows > 0, hits / np.maximum(rows, 1), np.nan)
        strata = {int(size): float(covered[sizes == size].mean()) for size in np.unique(sizes)}
        return cls(float(covered.mean()), float(sizes.mean()), per_class, strata)

    @classmethod
    def from_sums(cls, covered: float, sizes: float, rows: int) -> Coverage:
        """The marginal figures from sums over chunks (covered rows, set sizes) of `rows` rows."""
        return cls(float(covered) / rows, float(sizes) / rows, np.empty(0), {})


def conformal_p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of outlier scores (Bates et al. 2023, marginal): (1 + #{i : s_i ≥ s}) / (m + 1)
    against the m calibration scores, given sorted ascending. Exact counts: for an in-distribution row
    exchangeable with the calibration rows, P(p ≤ α) ≤ α."""
    greater_or_equal = len(calibration) - np.searchsorted(calibration, scores, side="left")
    p: np.ndarray = (1.0 + greater_or_equal) / (len(calibration) + 1.0)
    return p


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Rejections of the Benjamini–Hochberg procedure at level α over the given rows: the k smallest
    p-values, k the largest with p_(k) ≤ k·α/N (none if there is no such k); controls the FDR for
    independent or PRDS p-values (conformal p-values are PRDS, Bates et al. 2023)."""
    n = len(p_values)
    ordered = np.sort(p_values)
    passing = np.flatnonzero(ordered <= np.arange(1, n + 1) * alpha / n)
    if passing.size == 0:
        return np.zeros(n, bool)
    rejected: np.ndarray = p_values <= ordered[passing[-1]]
    return rejected


def p_value_fragment(calibration: np.ndarray, scores: Var) -> Var:
    """`conformal_p_values` as a graph fragment (the export's `ood_p_value`): the calibration scores are a
    sorted constant [m] and #{i : s_i ≥ s} a broadcast comparison summed per row (ONNX has no sorted
    search; O(N·m) compares per chunk, a few ms for m = 10⁴ on one row). Scores are compared in float64."""
    constant = op.constant(value=np.asarray(calibration, np.float64).reshape(1, -1))
    s = op.unsqueeze(op.cast(scores, to=np.float64), ints(1))
    at_least = op.reduce_sum(op.cast(op.greater_or_equal(constant, s), to=np.float64), ints(1), keepdims=0)
    m = scalar(float(len(calibration)), np.float64)
    one = scalar(1.0, np.float64)
    return op.div(op.add(one, at_least), op.add(m, one))

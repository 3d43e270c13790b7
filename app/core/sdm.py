"""SDM uncertainty, the canonical (v2) estimator of sdm.md §4 (Schmaltz, "Similarity-Distance-Magnitude
Activations", arXiv 2509.12760, §3 and App. A.4–A.5).

Per row, all in one ONNX graph after the neighbour search (`neighbours.py`):
- q: the leading run of nearest support points that are correctly predicted and share ŷ (§4.3);
- d = min_c (1 − #{v ∈ D_c : v < d_nearest} / |D_c|), 0 for an empty D_c (§4.4);
- sdm = softmax(ln(2 + q)·d·z) (§4.5); q′ = min(q, (2 + q)^{sdm_ŷ}); OOD ⇔ ⌊q′⌋ ≤ 0 (§4.6);
- n̂_c = min(#{v ∈ Q_c : v < q′}, |Q_c| − 1), ε = max_c √(ln(2/(1−α)) / (2 n̂_c)) (1 when n̂_c = 0),
  d_lower/upper = clip(d ∓ ε, 0, 1), sdm and q′ again with them (§4.8);
- HR: ¬OOD ∧ q′ ≥ q′_min ∧ {c : sdm_c ≥ ψ_c} = {ŷ}, and HR_lower with the lower values (§4.9).
The fit-time threshold search (Alg. 1, §4.7) runs in numpy, as the spec recommends (§8).

Precision: the neighbour search runs in the support's dtype, and the estimator in the calibration
logits' dtype (scored logits are cast to it), each in its own precision as api.md asks. float32 follows
the float32 reference (torch) operation by operation: (z·d)·ln(2+q), softmax as exp/Σexp, ψ ≥ α with α
rounded to float32, so saturated outputs (sdm_ŷ = 1.0) and its one-ulp tie breaks are the reference's.
float64 keeps exact-arithmetic ties (integer q′ = q, the roots (2+q)^{1/C} at d = 0), like the spec's
tables (§6, §9).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.chunking import Chunking
from app.core.fitted_state import FittedState, HyperParameters
from app.core.fold import Assembled, Chunk, InMemory, fold
from app.core.graph_context import class_range, ints, scalar
from app.core.graphrun import mapped_outputs
from app.core.neighbours import nearest, nearest_fragment, squared_norms
from app.core.runtime import SessionCache

NEIGHBOUR_LIST_BYTES = 64 << 20  # [block, k] distances and indices kept at once while scoring


def similarity_graph(k: int, dtype: np.dtype) -> onnx.ModelProto:
    """(logits [N, C], neighbours [N, k], support_code [S]) -> prediction ŷ = argmax z (first index
    on ties) and q = Σ_i Π_{l≤i} m_l, with m_l = [code of neighbour l = ŷ] and a support row's code its
    prediction when correct, else −1 (§4.3); the run is counted as the neighbours whose cumulative
    count of non-matches is still 0 (§8: CumSum in place of CumProd)."""
    logits = argument(Tensor(dtype, ("N", "C")))
    neighbours = argument(Tensor(np.int64, ("N", k)))
    support_code = argument(Tensor(np.int64, ("S",)))
    prediction, q = similarity(logits, neighbours, support_code)
    return build(
        {"logits": logits, "neighbours": neighbours, "support_code": support_code},
        {"prediction": prediction, "q": q},
    )


def similarity(logits: Var, neighbours: Var, support_code: Var) -> tuple[Var, Var]:
    """The fragment of `similarity_graph`: (ŷ, q) of logits [N, C] and neighbour indices [N, k]."""
    prediction = op.arg_max(logits, axis=1, keepdims=0, select_last_index=0)
    codes = op.gather(support_code, neighbours, axis=0)
    misses = op.cast(op.not_(op.equal(codes, op.unsqueeze(prediction, ints(1)))), to=np.int64)
    run = op.equal(op.cum_sum(misses, scalar(1, np.int64)), scalar(0, np.int64))
    return prediction, op.reduce_sum(op.cast(run, to=np.int64), ints(1), keepdims=0)


def _strictly_less(table: Var, x: Var, dtype: np.dtype) -> Var:
    """[N, C] counts #{v ∈ table[c] : v < x_n} (searchsorted-left, §4.4); the table is [C, L] padded with +∞."""
    below = op.less(op.unsqueeze(table, ints(0)), op.unsqueeze(x, ints(1, 2)))
    return op.reduce_sum(op.cast(below, to=dtype), ints(2), keepdims=0)


def _activation(logits: Var, log_base: Var, d: Var) -> tuple[Var, Var]:
    """log sdm and sdm of the scaled logits (z·d)·ln(2 + q) (§4.5), max-shifted; sdm = exp/Σexp."""
    scaled = op.mul(op.mul(logits, op.unsqueeze(d, ints(1))), op.unsqueeze(log_base, ints(1)))
    shifted = op.sub(scaled, op.reduce_max(scaled, ints(1), keepdims=1))
    exp = op.exp(shifted)
    total = op.reduce_sum(exp, ints(1), keepdims=1)
    return op.sub(shifted, op.log(total)), op.div(exp, total)


def _rescaled(q: Var, base: Var, probabilities: Var, prediction: Var) -> Var:
    """q′ = min(q, (2 + q)^{sdm_ŷ}) (§4.6)."""
    top = op.squeeze(op.gather_elements(probabilities, op.unsqueeze(prediction, ints(1)), axis=1), ints(1))
    return op.min([q, op.pow(base, top)])


def _high_reliability(is_ood: Var, q_rescaled: Var, probabilities: Var, prediction: Var, psi: Var, q_min: Var) -> Var:
    """¬OOD ∧ q′ ≥ q′_min ∧ {c : sdm_c ≥ ψ_c} = {ŷ} (§4.9); q′_min = +∞ admits nothing."""
    predicted = op.equal(class_range(probabilities), op.unsqueeze(prediction, ints(1)))
    singleton = op.reduce_min(
        op.cast(op.equal(op.greater_or_equal(probabilities, psi), predicted), to=np.int64), ints(1), keepdims=0
    )
    inside = op.and_(op.not_(is_ood), op.greater_or_equal(q_rescaled, q_min))
    return op.and_(inside, op.cast(singleton, to=np.bool_))


def estimator_graph(dtype: np.dtype) -> onnx.ModelProto:
    """Everything after q, for one batch of rows, against a fitted model's tables (graph inputs, so one
    session serves every model). Tables are [C, L] sorted values padded with +∞ plus [C] sizes."""
    rows = {
        "logits": argument(Tensor(dtype, ("N", "C"))),
        "prediction": argument(Tensor(np.int64, ("N",))),
        "q": argument(Tensor(dtype, ("N",))),  # integers from the search; real values only in property tests
        "d_nearest": argument(Tensor(dtype, ("N",))),
    }
    tables = {
        "distance_table": argument(Tensor(dtype, ("C", "L"))),
        "distance_sizes": argument(Tensor(dtype, ("C",))),
        "similarity_table": argument(Tensor(dtype, ("C", "K"))),
        "similarity_sizes": argument(Tensor(dtype, ("C",))),
        "psi": argument(Tensor(dtype, ("C",))),
        "q_min": argument(Tensor(dtype, ())),
        "dkw_log": argument(Tensor(dtype, ())),  # ln(2/(1−α)); +∞ at α = 1: every ε is 1 (same clipped d)
    }
    return build(rows | tables, estimate(**rows, **tables))


def estimate(
    logits: Var,
    prediction: Var,
    q: Var,
    d_nearest: Var,
    distance_table: Var,
    distance_sizes: Var,
    similarity_table: Var,
    similarity_sizes: Var,
    psi: Var,
    q_min: Var,
    dkw_log: Var,
) -> dict[str, Var]:
    """The fragment of `estimator_graph`, everything in the logits' dtype."""
    dtype = np.dtype(logits.unwrap_tensor().dtype)
    zero, one, two = scalar(0.0, dtype), scalar(1.0, dtype), scalar(2.0, dtype)
    base = op.add(scalar(2.0, dtype), q)
    log_base = op.log(base)
    below = _strictly_less(distance_table, d_nearest, dtype)
    quantile = op.where(
        op.greater(distance_sizes, zero), op.sub(one, op.div(below, op.max([distance_sizes, one]))), zero
    )
    d = op.reduce_min(quantile, ints(1), keepdims=0)
    log_p, probabilities = _activation(logits, log_base, d)
    q_rescaled = _rescaled(q, base, probabilities, prediction)
    is_ood = op.less_or_equal(op.floor(q_rescaled), zero)

    counts = _strictly_less(similarity_table, q_rescaled, dtype)
    n_hat = op.min([counts, op.max([op.sub(similarity_sizes, one), zero])])
    epsilon_c = op.where(op.greater(n_hat, zero), op.sqrt(op.div(dkw_log, op.mul(two, op.max([n_hat, one])))), one)
    epsilon = op.reduce_max(epsilon_c, ints(1), keepdims=0)
    d_lower = op.clip(op.sub(d, epsilon), zero, one)
    d_upper = op.clip(op.add(d, epsilon), zero, one)
    _, probabilities_lower = _activation(logits, log_base, d_lower)
    _, probabilities_upper = _activation(logits, log_base, d_upper)
    q_rescaled_lower = _rescaled(q, base, probabilities_lower, prediction)
    is_ood_lower = op.less_or_equal(op.floor(q_rescaled_lower), zero)
    return {
        "d": d,
        "log_probabilities": log_p,
        "probabilities": probabilities,
        "q_rescaled": q_rescaled,
        "is_ood": is_ood,
        "effective_sample_size": op.cast(n_hat, to=np.int64),
        "d_lower": d_lower,
        "d_upper": d_upper,
        "probabilities_lower": probabilities_lower,
        "probabilities_upper": probabilities_upper,
        "q_rescaled_lower": q_rescaled_lower,
        "high_reliability": _high_reliability(is_ood, q_rescaled, probabilities, prediction, psi, q_min),
        "high_reliability_lower": _high_reliability(
            is_ood_lower, q_rescaled_lower, probabilities_lower, prediction, psi, q_min
        ),
    }


def padded_table(groups: list[np.ndarray], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-class values as a [C, max(1, L)] table padded with +∞, and the [C] sizes (the counts in the
    graph need no order; the groups arrive sorted anyway)."""
    width = max([1, *(len(g) for g in groups)])
    table = np.full((len(groups), width), np.inf, dtype=dtype)
    for c, values in enumerate(groups):
        table[c, : len(values)] = values
    return table, np.asarray([len(g) for g in groups], dtype=dtype)


def lower_quantile_index(n: int, alpha: float) -> int:
    """min(⌊(1−α)·n⌋, n−1) with 1 − α in float64, exactly as the reference (§4.7, §6 'float trap')."""
    return min(int((1.0 - alpha) * n), n - 1)


def _prefix_quantiles(values: np.ndarray, alpha: float) -> np.ndarray:
    """ψ of every prefix: out[n] = the lower (1−α) quantile of values[:n] (out[0] = 0). Two heaps keep the
    index+1 smallest values apart from the rest; the index grows by at most one per added value."""
    out = np.zeros(len(values) + 1)
    low: list[float] = []  # max-heap (negated) of the index+1 smallest
    high: list[float] = []  # min-heap of the rest
    for n, value in enumerate(values.tolist(), start=1):
        if low and value < -low[0]:
            heapq.heappush(low, -value)
        else:
            heapq.heappush(high, value)
        wanted = lower_quantile_index(n, alpha) + 1
        while len(low) > wanted:
            heapq.heappush(high, -heapq.heappop(low))
        while len(low) < wanted:
            heapq.heappush(low, -heapq.heappop(high))
        out[n] = max(-low[0], 0.0)
    return out


def high_reliability_thresholds(
    q_rescaled: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, alpha: float
) -> tuple[float, np.ndarray]:
    """Alg. 1 (§4.7): the smallest candidate t among the non-OOD calibration q′ such that for every class
    c, ψ_c = the lower (1−α) quantile of {sdm_i[c] : y_i = c, q′_i ≥ t} is ≥ α; (+∞, 0) when none does.
    Each class's ψ over growing sets is computed once (q′ descending), then every candidate is checked.
    ψ ≥ α is compared in the outputs' precision (α as a float32 for float32 outputs, as torch does)."""
    classes = probabilities.shape[1]
    kept = np.floor(q_rescaled) > 0
    candidates = np.unique(q_rescaled[kept])
    psi_at = np.zeros((classes, len(candidates)))
    for c in range(classes):
        rows = np.flatnonzero(kept & (labels == c))
        order = rows[np.argsort(-q_rescaled[rows], kind="stable")]
        prefix = _prefix_quantiles(probabilities[order, c], alpha)
        descending = q_rescaled[order]
        sizes = np.searchsorted(-descending, -candidates, side="right")  # #{q′ ≥ t}
        psi_at[c] = prefix[sizes]
    dtype = probabilities.dtype
    passing = np.flatnonzero((psi_at >= dtype.type(alpha)).all(axis=0))  # α rounded like the reference's
    if not len(passing):
        return math.inf, np.zeros(classes, dtype)
    first = int(passing[0])
    return float(candidates[first]), psi_at[:, first].astype(dtype)


@dataclass
class LabelledSet:
    """Exemplar vectors h′ [N, M], logits z′ [N, C] and labels [N] of a support or calibration set."""

    embeddings: np.ndarray
    logits: np.ndarray
    labels: np.ndarray


@dataclass
class Scores:
    """Per-row outputs of `SdmEstimator.score` (api.md names) plus the neighbour search's."""

    prediction: np.ndarray
    q: np.ndarray
    d_nearest: np.ndarray
    nearest_index: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)


class PerClassValues:
    """A per-class list of sorted values, kept (and stored) as `<stem>_values_`, all classes' values
    joined, and `<stem>_sizes_`, [C] int64 counts; set from and read as the list, in the estimator's dtype."""

    def __init__(self, stem: str) -> None:
        self.stem = stem

    def __get__(self, estimator: SdmEstimator, owner: type | None = None) -> list[np.ndarray]:
        values, sizes = getattr(estimator, f"{self.stem}_values_"), getattr(estimator, f"{self.stem}_sizes_")
        return np.split(values, np.cumsum(sizes)[:-1])

    def __set__(self, estimator: SdmEstimator, groups: list[np.ndarray]) -> None:
        setattr(estimator, f"{self.stem}_values_", np.concatenate(groups).astype(estimator.dtype_, copy=False))
        setattr(estimator, f"{self.stem}_sizes_", np.asarray([len(v) for v in groups], np.int64))


class SdmEstimator(HyperParameters, FittedState):
    """The v2 estimator without adaptor training (§8): support and calibration exemplars in, the
    fitted tables out. Fitted state (stored by `fitted_arrays`): support_embeddings_, support_code_, k_,
    the per-class eCDFs D_c and Q_c as values and sizes (`distance_ecdfs_` and `similarity_ecdfs_` give
    them per class), q_min_ and psi_, whose dtype is the calibration logits' (`dtype_`, in which the
    estimator runs); calibration_ is the in-sample report, kept by the record as JSON."""

    def __init__(self, alpha: float = 0.95, k: int = 2048) -> None:
        self.alpha = alpha
        self.k = k

    def state_keys(self) -> tuple[str, ...]:
        return (
            "support_embeddings",
            "support_code",
            "distance_values",
            "distance_sizes",
            "similarity_values",
            "similarity_sizes",
            "psi",
            "q_min",
            "k",
        )

    distance_ecdfs_ = PerClassValues("distance")  # D_c: nearest distances of class-c rows with q > 0
    similarity_ecdfs_ = PerClassValues("similarity")  # Q_c: q′ of the class-c calibration rows

    @property
    def dtype_(self) -> np.dtype:
        return np.dtype(self.psi_.dtype)

    def fit(self, support: LabelledSet, calibration: LabelledSet, cache: SessionCache | None = None) -> SdmEstimator:
        classes = support.logits.shape[1]
        self.support_embeddings_ = support.embeddings
        prediction = np.argmax(support.logits, axis=1)
        self.support_code_ = np.where(prediction == support.labels, prediction, -1).astype(np.int64)
        self.k_ = min(self.k, len(support.embeddings))
        self.q_min_, self.psi_ = math.inf, np.zeros(classes, calibration.logits.dtype)
        self.distance_ecdfs_ = [np.zeros(0, self.dtype_)] * classes
        self.similarity_ecdfs_ = [np.zeros(0, self.dtype_)] * classes
        found = self._neighbours(calibration.embeddings, calibration.logits, cache)
        self.distance_ecdfs_ = _class_groups(found.d_nearest, calibration.labels, found.q > 0, classes)
        first = self._estimate(found, calibration.logits, cache)  # d, sdm and q′ need only D_c; Q_c comes next
        q_min, psi = high_reliability_thresholds(
            first["q_rescaled"], first["probabilities"], calibration.labels, self.alpha
        )
        self.q_min_, self.psi_ = q_min, np.asarray(psi, self.dtype_)
        everything = np.ones(len(calibration.labels), dtype=bool)
        self.similarity_ecdfs_ = _class_groups(first["q_rescaled"], calibration.labels, everything, classes)
        final = self._estimate(found, calibration.logits, cache)
        self.calibration_ = _report(found, final, calibration.labels)
        return self

    @property
    def hr_class_conditional_accuracy(self) -> float:
        """α when Alg. 1 found a threshold, else 0 (§4.7)."""
        return self.alpha if math.isfinite(self.q_min_) else 0.0

    def score(self, embeddings: np.ndarray, logits: np.ndarray, cache: SessionCache | None = None) -> Scores:
        found = self._neighbours(embeddings, logits, cache)
        found.columns = self._estimate(found, logits, cache)
        return found

    def support_statistics(self, support: LabelledSet, cache: SessionCache | None = None) -> dict[str, Any]:
        """Leave-self-out q, d_nearest and d of the support points (§4.3–4.4, as training sees them from
        epoch 2): the first neighbour (the point itself) is dropped and d uses the support's own
        eCDFs (support rows of true class c with q > 0)."""
        classes = support.logits.shape[1]
        k = min(self.k, len(support.embeddings) - 1)
        found = self._neighbours(support.embeddings, support.logits, cache, k=k, exclude_self=True)
        own_ecdfs = _class_groups(found.d_nearest, support.labels, found.q > 0, classes)
        columns = self._estimate(found, support.logits, cache, own_ecdfs)
        return {
            "q": found.q,
            "d_nearest": found.d_nearest,
            "d": columns["d"],
            "sdm_loss": _sdm_losses(columns["log_probabilities"], found.q, support.labels),
        }

    def _neighbours(
        self,
        embeddings: np.ndarray,
        logits: np.ndarray,
        cache: SessionCache | None,
        k: int | None = None,
        exclude_self: bool = False,
    ) -> Scores:
        """Search, then q, one block of queries at a time: only the nearest neighbour and q are kept, so
        the [block, k] neighbour lists bound the memory however many rows are scored."""
        k = k or self.k_
        queries = embeddings.astype(self.support_embeddings_.dtype, copy=False)
        block = max(1, NEIGHBOUR_LIST_BYTES // (12 * (k + 1)))
        support_sq = squared_norms(self.support_embeddings_)  # once, not per block

        def score(chunk: Chunk) -> dict[str, np.ndarray]:
            found = nearest(chunk["queries"], self.support_embeddings_, k, cache, exclude_self=exclude_self,
                            support_sq=support_sq)  # fmt: skip
            similarity = mapped_outputs(
                f"sdm-similarity:{k}:{logits.dtype}",
                lambda: similarity_graph(k, logits.dtype),
                {"logits": chunk["logits"], "neighbours": found.indices},
                {"support_code": self.support_code_},
                cache,
            )
            nearest_distance = found.distances[:, 0].astype(self.dtype_)
            return {"prediction": similarity["prediction"], "q": similarity["q"], "d_nearest": nearest_distance,
                    "nearest_index": found.indices[:, 0]}  # fmt: skip

        source = InMemory({"queries": queries, "logits": logits}, Chunking.blocks_of(block))
        columns = fold(source, {"scores": Assembled(score, source.rows)})["scores"]
        return Scores(columns["prediction"], columns["q"], columns["d_nearest"], columns["nearest_index"])

    def _tables(self, distance_ecdfs: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The fitted tables `estimate` reads, in the estimator's dtype."""
        dtype = self.dtype_
        distance_table, distance_sizes = padded_table(distance_ecdfs or self.distance_ecdfs_, dtype)
        similarity_table, similarity_sizes = padded_table(self.similarity_ecdfs_, dtype)
        # ln(2/(1−α)) as the reference forms it: 2/(1−α) in float64, then rounded and logged in dtype
        dkw_log = np.log(dtype.type(2.0 / (1.0 - self.alpha))) if self.alpha < 1.0 else dtype.type(np.inf)
        return {
            "distance_table": distance_table,
            "distance_sizes": distance_sizes,
            "similarity_table": similarity_table,
            "similarity_sizes": similarity_sizes,
            "psi": np.asarray(self.psi_, dtype=dtype),
            "q_min": np.asarray(self.q_min_, dtype=dtype),
            "dkw_log": np.asarray(dkw_log, dtype=dtype),
        }

    def _estimate(
        self,
        found: Scores,
        logits: np.ndarray,
        cache: SessionCache | None,
        distance_ecdfs: list[np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        dtype = self.dtype_
        tables = self._tables(distance_ecdfs)
        widths = tables["distance_table"].shape[1] + tables["similarity_table"].shape[1]
        return mapped_outputs(
            f"sdm-estimator:{dtype}",
            lambda: estimator_graph(dtype),
            {
                "logits": logits.astype(dtype, copy=False),
                "prediction": found.prediction,
                "q": found.q.astype(dtype),
                "d_nearest": found.d_nearest.astype(dtype, copy=False),
            },
            tables,
            cache,
            row_bytes=dtype.itemsize * logits.shape[1] * (widths + 8),
        )

    def fragment(self, embeddings: Var, logits: Var) -> dict[str, Var]:
        """`score` as one fragment with the support and tables embedded (for exports): embeddings [N, M]
        and logits [N, C] -> prediction, q (int64) and the estimator's columns. The search runs in the
        support's dtype and the estimate in the estimator's, as `score` does."""
        queries = op.cast(embeddings, to=self.support_embeddings_.dtype)
        distances, indices = nearest_fragment(queries, self.support_embeddings_, self.k_)
        prediction, q = similarity(logits, indices, op.constant(value=self.support_code_))
        d_nearest = op.squeeze(op.slice(distances, ints(0), ints(1), ints(1)), ints(1))
        columns = estimate(
            op.cast(logits, to=self.dtype_),
            prediction,
            op.cast(q, to=self.dtype_),
            op.cast(d_nearest, to=self.dtype_),
            **{name: op.constant(value=value) for name, value in self._tables().items()},
        )
        return {"prediction": prediction, "q": q, "d_nearest": d_nearest} | columns


def _class_groups(values: np.ndarray, labels: np.ndarray, keep: np.ndarray, classes: int) -> list[np.ndarray]:
    """Sorted values of the kept rows of each true class (D_c with keep = q > 0; Q_c with every row)."""
    return [np.sort(values[keep & (labels == c)]) for c in range(classes)]


def _sdm_losses(log_probabilities: np.ndarray, q: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean −log_{2+q} sdm_y (§4.5): marginal, and balanced (the mean over all C classes of each class's
    mean; a class without rows counts 0)."""
    rows = -log_probabilities[np.arange(len(labels)), labels].astype(np.float64) / np.log(2.0 + q)
    classes = log_probabilities.shape[1]
    counts = np.bincount(labels, minlength=classes)
    sums = np.bincount(labels, weights=rows, minlength=classes)
    per_class = np.divide(sums, counts, out=np.zeros(classes), where=counts > 0)
    return {"marginal": float(rows.mean()), "balanced": float(per_class.mean())}


def _report(found: Scores, columns: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """In-sample summary of the calibration set under the fitted thresholds."""
    correct = found.prediction == labels
    hr = columns["high_reliability"]
    return {
        "sdm_loss": _sdm_losses(columns["log_probabilities"], found.q, labels),
        "ood": int(columns["is_ood"].sum()),
        "high_reliability": int(hr.sum()),
        "high_reliability_lower": int(columns["high_reliability_lower"].sum()),
        "high_reliability_accuracy": float(correct[hr].mean()) if hr.any() else None,
        "accuracy": float(correct.mean()),
    }

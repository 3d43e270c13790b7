"""Shared graph context: the inputs of an evaluation graph and the values every fragment may reuse.

Values are built lazily and cached on the context, so a fused graph computes the log-softmax, the
top-label confidence or the true-class log-probability once, however many losses and metrics use them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument

T = TypeVar("T")
InputKind = Literal["logits", "probabilities"]
TargetKind = Literal["labels", "targets", "label_sets"]
Task = Literal["multiclass", "multilabel"]


def scalar(value: float, dtype: npt.DTypeLike) -> Var:
    """A scalar constant of a given dtype."""
    return op.constant(value=np.asarray(value, dtype=dtype))


def ints(*values: int) -> Var:
    """An int64 1-D constant (axes, shapes)."""
    return op.constant(value=np.asarray(values, dtype=np.int64))


def binary_columns(x: Var, logits: bool) -> Var:
    """Binary scores [N] (or [N, 1]) as the two-class problem of api.md: log-odds z -> [0, z] (z − z:
    the inputs are finite), P(class 1) p -> [1 − p, p]; [N, 2] in x's dtype."""
    column = op.reshape(x, ints(-1, 1))
    first = op.sub(column, column) if logits else op.sub(scalar(1.0, x.unwrap_tensor().dtype), column)
    return op.concat([first, column], axis=1)


def uniform_bin_index(p: Var, bins: int) -> Var:
    """min(floor(p·B), B − 1) computed in float64 so that float32 rounding cannot move a row across an
    edge (api.md pins the rule). The one binning function: the metrics' graphs and the gate's bootstrap
    (through `metrics.uniform_bins`) both run it."""
    wide = p if p.unwrap_tensor().dtype == np.float64 else op.cast(p, to=np.float64)
    scaled = op.floor(op.mul(wide, scalar(bins, np.float64)))
    return op.clip(op.cast(scaled, to=np.int64), None, scalar(bins - 1, np.int64))


def class_range(x: Var) -> Var:
    """[1, C] int64 row 0..C−1 over x's last axis, to compare with label or argmax columns."""
    c = op.squeeze(op.shape(x, start=-1), ints(0))
    return op.unsqueeze(op.range(scalar(0, np.int64), c, scalar(1, np.int64)), ints(0))


@dataclass(frozen=True)
class InputLayout:
    """What a request feeds the graph: it selects the graph's inputs and is part of its cache key."""

    dtype: str  # "float32" | "float64"
    input_kind: InputKind
    target_kind: TargetKind
    has_teacher: bool = False
    binary: bool = False  # scores given as [N]: the logit, or the probability, of class 1 (api.md)
    slice_keys: int = 0  # rows carry a slot per slice key (`app.core.slices`): every sum is also summed per slot
    task: Task = "multiclass"  # multilabel: per-label logits and multi-hot truth (targets or label sets)
    propensity: bool = False  # multilabel: label_frequencies and n_train are fed (propensity-scored metrics)
    bags: bool = False  # rows carry a bag id, and the bags' label distributions are fed (bag-level losses)

    @property
    def sliced(self) -> bool:
        return self.slice_keys > 0

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


@dataclass
class GraphContext:
    """Graph inputs plus lazily built shared intermediates (all rows of one chunk at a time)."""

    layout: InputLayout
    top_depth: int = 1  # multilabel: the deepest top-k the plan ranks (one TopK serves every k)
    inputs: dict[str, Var] = field(default_factory=dict)
    per_slot: dict[int, tuple[Var, Var]] = field(default_factory=dict)  # id(total) -> (total, [S, …] per slot)
    per_slot_rows: dict[int, tuple[Var, Var, Var]] = field(default_factory=dict)  # id(total) -> (total, index, values)
    _shared: dict[Hashable, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dt = self.layout.np_dtype
        scores: tuple[str, ...] = ("N",) if self.layout.binary else ("N", "C")
        self.inputs[self.layout.input_kind] = argument(Tensor(dt, scores))
        if self.layout.target_kind == "labels":
            self.inputs["labels"] = argument(Tensor(np.int64, ("N",)))
        elif self.layout.target_kind == "label_sets":  # CSR as (row in the chunk, label) per positive
            self.inputs["label_rows"] = argument(Tensor(np.int64, ("M",)))
            self.inputs["label_indices"] = argument(Tensor(np.int64, ("M",)))
        else:
            self.inputs["targets"] = argument(Tensor(dt, ("N", "C")))
        if self.layout.bags:
            self.inputs["bags"] = argument(Tensor(np.int64, ("N",)))
            self.inputs["bag_targets"] = argument(Tensor(dt, ("B", "C")))
        if self.layout.propensity:
            self.inputs["label_frequencies"] = argument(Tensor(dt, ("C",)))
            self.inputs["n_train"] = argument(Tensor(dt, ()))
        self.inputs["sample_weight"] = argument(Tensor(dt, ("N",)))
        if self.layout.has_teacher:
            self.inputs["teacher_logits"] = argument(Tensor(dt, scores))
        if self.layout.sliced:
            self.inputs["slots"] = argument(Tensor(np.int64, ("N", self.layout.slice_keys)))
            self.inputs["slot_count"] = argument(Tensor(np.int64, (1,)))

    def shared(self, key: Hashable, build: Callable[[], T]) -> T:
        """A value built once per graph under `key` (for fragments parametrized beyond the context)."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]  # type: ignore[no-any-return]

    # ---- constants -------------------------------------------------------------------------------
    def const(self, value: float | npt.ArrayLike) -> Var:
        """A constant in the graph's float dtype."""
        return op.constant(value=np.asarray(value, dtype=self.layout.np_dtype))

    @staticmethod
    def like(x: Var, value: float) -> Var:
        """A scalar constant in x's dtype (for helpers used on float32 and float64 values alike)."""
        return scalar(value, x.unwrap_tensor().dtype)

    @staticmethod
    def ints(*values: int) -> Var:
        return ints(*values)

    def f64(self, x: Var) -> Var:
        """Cast to float64 for accumulation (no node when x is float64 already)."""
        return x if x.unwrap_tensor().dtype == np.float64 else op.cast(x, to=np.float64)

    def row_sum(self, x: Var) -> Var:
        """Sum over the class axis, [N, C] -> [N]."""
        return op.reduce_sum(x, self.ints(-1), keepdims=0)

    def total(self, x: Var) -> Var:
        """Sum of a per-row vector in float64, [N] -> scalar: the mergeable part of a state."""
        x = self.f64(x)
        whole = op.reduce_sum(x, keepdims=0)
        if self.layout.sliced:
            self._per_slot(whole, x, None, self.ints(1), self.ints())
        return whole

    def weighted_total(self, x: Var) -> Var:
        """Σ_i w_i x_i in float64."""
        return self.total(op.mul(self.f64(self.weights), self.f64(x)))

    def scatter_total(self, index: Var, values: Var, size: Var, per_slot_as_rows: bool = False) -> Var:
        """Σ values per index into a float64 vector of `size` ([1] int64): index and values are [M] with M
        a multiple of N, row i's contributions contiguous (a flattened [N, k]). A mergeable state.
        Sliced, a wide state (`per_slot_as_rows`: C² for a confusion matrix) keeps its rows' (index, value)
        pairs for the groups instead of a dense [S, size] copy: at 100 groups of 1,000 classes the dense
        copy was 800 MB per chunk, and adding those copies took most of the evaluation."""
        values = self.f64(values)
        zeros = op.constant_of_shape(size, value=np.array([0.0], np.float64))
        whole = op.scatter_elements(zeros, index, values, reduction="add")
        if self.layout.sliced and per_slot_as_rows:
            per_row = op.concat([op.shape(self.inputs["slots"], end=1), self.ints(-1)], axis=0)
            self.per_slot_rows[id(whole)] = (whole, op.reshape(index, per_row), op.reshape(values, per_row))
        elif self.layout.sliced:
            self._per_slot(whole, values, index, size, size)
        return whole

    def _per_slot(self, whole: Var, values: Var, index: Var | None, size: Var, shape: Var) -> None:
        """The same sum per slot, [S, *shape] (a segmented reduction: per slice key one scatter of the
        values at slot · size + index), recorded against `whole` for `build_graph` to output beside it."""
        slots = self.inputs["slots"]  # [N, K]: each row's slot under each key
        contributions = op.concat([op.shape(slots, end=1), self.ints(-1)], axis=0)  # [N, k]
        summed = op.constant_of_shape(op.mul(self.inputs["slot_count"], size), value=np.array([0.0], np.float64))
        flat_values = op.reshape(values, self.ints(-1))
        for key in range(self.layout.slice_keys):
            first = op.mul(op.slice(slots, self.ints(key), self.ints(key + 1), self.ints(1)), size)  # [N, 1]
            target = first if index is None else op.add(first, op.reshape(index, contributions))
            summed = op.scatter_elements(summed, op.reshape(target, self.ints(-1)), flat_values, reduction="add")
        self.per_slot[id(whole)] = (whole, op.reshape(summed, op.concat([self.ints(-1), shape], axis=0)))

    @cached_property
    def slot_rows(self) -> Var:
        """Rows per slot, [S] float64 (sliced layouts only)."""
        ones = op.constant_of_shape(op.shape(self.inputs["slots"], end=1), value=np.array([1.0], np.float64))
        whole = op.reduce_sum(ones, keepdims=0)
        self._per_slot(whole, ones, None, self.ints(1), self.ints())
        return self.per_slot[id(whole)][1]

    def expm1(self, x: Var) -> Var:
        """exp(x) − 1 without cancellation near 0: Kahan's (u − 1)·x / log u with u = e^x for |x| < ½
        (where u is a normal number), plain e^x − 1 elsewhere (no cancellation there)."""
        one, half = self.like(x, 1.0), self.like(x, 0.5)
        small = op.clip(x, op.neg(half), half)
        u = op.exp(small)
        at_one = op.equal(u, one)
        kahan = op.where(
            at_one, small, op.div(op.mul(op.sub(u, one), small), op.log(op.where(at_one, op.exp(half), u)))
        )
        return op.where(op.less(op.abs(x), half), kahan, op.sub(op.exp(x), one))

    def log1p(self, u: Var) -> Var:
        """log(1 + u) accurate for tiny u (Goldberg's trick: log(w)·u/(w − 1), w = 1 + u)."""
        one, zero = self.like(u, 1.0), self.like(u, 0.0)
        w = op.add(one, u)
        w_minus_1 = op.sub(w, one)
        exact = op.equal(w_minus_1, zero)
        return op.where(exact, u, op.div(op.mul(op.log(w), u), op.where(exact, one, w_minus_1)))

    def softplus(self, x: Var) -> Var:
        """log(1 + e^x) = max(x, 0) + log1p(e^−|x|): finite for any x, ≈ e^x far below 0."""
        return op.add(op.relu(x), self.log1p(op.exp(op.neg(op.abs(x)))))

    def at_label(self, x: Var) -> Var:
        """x[i, y_i] for each row, [N, C] -> [N]."""
        return op.squeeze(op.gather_elements(x, self.labels_col, axis=1), self.ints(1))

    # ---- inputs ------------------------------------------------------------------------------------
    @property
    def weights(self) -> Var:
        return self.inputs["sample_weight"]

    @property
    def has_labels(self) -> bool:
        return self.layout.target_kind == "labels"

    @cached_property
    def labels(self) -> Var:
        return self.inputs["labels"]

    @cached_property
    def labels_col(self) -> Var:
        return op.unsqueeze(self.labels, self.ints(1))

    @property
    def targets(self) -> Var:
        return self.inputs["targets"]

    @cached_property
    def teacher_logits(self) -> Var:
        return self._columns(self.inputs["teacher_logits"], logits=True)

    @cached_property
    def given(self) -> Var:
        """The logits or probabilities as given, [N, C]; binary [N] inputs as the two-class problem of
        api.md: z = [0, logit], p = [1 − p₁, p₁]."""
        return self._columns(self.inputs[self.layout.input_kind], logits=self.from_logits)

    def _columns(self, x: Var, logits: bool) -> Var:
        """x itself, or binary [N] as [N, 2] (`binary_columns`)."""
        return binary_columns(x, logits) if self.layout.binary else x

    @cached_property
    def scores(self) -> Var:
        """Per-class scores that order classes: the logits, or log p when probabilities are given."""
        if self.layout.input_kind == "logits":
            return self.given
        return self.log_probs

    # ---- softmax family (§1.1 of losses_calibration.md) -------------------------------------------
    # From logits z: e = exp(z − s), S = Σ e, lse = s + log S for a per-row shift s. Row quantities (CE,
    # confidence, Σp²) come from these reductions without materializing the [N, C] log-softmax, which
    # onnxruntime computes slowly for narrow rows. The shift is the row max (the textbook stable form)
    # only when a chunk needs it: if every row max lies where exp neither overflows (Σe² over C classes)
    # nor leaves the normal range with 40 nats to spare (|z| ≲ 42 in float32, 350 in float64), s = 0 and
    # the broadcast subtraction, a full pass over [N, C], is skipped. Terms that need log p or p per
    # class build them once.
    @property
    def from_logits(self) -> bool:
        return self.layout.input_kind == "logits"

    @cached_property
    def row_max(self) -> Var:
        """max_k z_k, [N, 1] (multilabel: the first of the shared top-k)."""
        if self.multilabel:
            return op.slice(self.top[0], self.ints(0), self.ints(1), self.ints(1))
        return op.reduce_max(self.given, self.ints(-1), keepdims=1)

    @cached_property
    def _shifted(self) -> tuple[Var, Var]:
        z, m = self.given, self.row_max
        info = np.finfo(self.layout.np_dtype)
        # Σ e² (for Σp²) must not overflow either: half the exponent range, less log C.
        highest = op.sub(self.const(0.5 * np.log(info.max) - 1.0), op.log(self.num_classes_f))
        lowest = self.const(np.log(info.tiny) + 40.0)
        unsafe = op.or_(
            op.greater(op.reduce_max(m, keepdims=0), highest), op.less(op.reduce_min(m, keepdims=0), lowest)
        )
        exps, shift = op.if_(
            unsafe,
            then_branch=lambda: [op.exp(op.sub(z, m)), m],
            else_branch=lambda: [op.exp(z), op.sub(m, m)],
        )
        return exps, shift

    @property
    def shifted_exp(self) -> Var:
        """e = exp(z − s), [N, C], s the row shift (0 or the row max)."""
        return self._shifted[0]

    @property
    def shift(self) -> Var:
        return self._shifted[1]

    @cached_property
    def exp_sum(self) -> Var:
        """S = Σ_k exp(z_k − s), [N, 1]."""
        return op.reduce_sum(self.shifted_exp, self.ints(-1), keepdims=1)

    @cached_property
    def logsumexp(self) -> Var:
        """lse(z) = s + log S, [N, 1]."""
        return op.add(self.shift, op.log(self.exp_sum))

    @cached_property
    def log_probs(self) -> Var:
        if self.from_logits:
            return op.clip(op.sub(self.given, self.logsumexp), None, self.const(0.0))
        # Probabilities: log p, floored at the dtype's smallest normal so that p = 0 stays finite.
        tiny = self.const(np.finfo(self.layout.np_dtype).tiny)
        return op.log(op.clip(self.given, tiny, None))

    @cached_property
    def probs(self) -> Var:
        if not self.from_logits:
            return self.given
        return op.div(self.shifted_exp, self.exp_sum)

    @cached_property
    def sum_sq_probs(self) -> Var:
        """Σ_c p_c², [N] (Σ e² / S² from logits)."""
        if not self.from_logits:
            return op.reduce_sum_square(self.probs, self.ints(-1), keepdims=0)
        ratio = op.div(
            op.reduce_sum_square(self.shifted_exp, self.ints(-1), keepdims=1), op.mul(self.exp_sum, self.exp_sum)
        )
        return op.squeeze(ratio, self.ints(1))

    @cached_property
    def one_minus_probs(self) -> Var:
        """1 − p_c, [N, C], accurate as p_c → 1: for the top class it is the sum of the other classes'
        probabilities (small terms, no cancellation), elsewhere −expm1(log p_c). Plain 1 − p rounds to 0
        once p > 1 − ε, which matters wherever (1 − p) is raised to a small power (Dice's α)."""
        top = op.cast(op.equal(self.prediction_col, self.class_index), to=self.layout.np_dtype)
        others = op.unsqueeze(self.row_sum(op.mul(self.probs, op.sub(self.const(1.0), top))), self.ints(1))
        return op.where(op.cast(top, to=np.bool_), others, op.neg(self.expm1(self.log_probs)))

    @cached_property
    def num_classes(self) -> Var:
        """C as an int64 scalar."""
        return op.squeeze(op.shape(self.scores, start=1, end=2), self.ints(0))

    @cached_property
    def num_classes_f(self) -> Var:
        return op.cast(self.num_classes, to=self.layout.np_dtype)

    @cached_property
    def class_index(self) -> Var:
        """[1, C] int64 row 0..C-1, for masks against labels."""
        return class_range(self.scores)

    @cached_property
    def onehot(self) -> Var:
        """One-hot labels (or the soft targets) as floats, [N, C]."""
        if not self.has_labels:
            return self.targets
        return op.cast(op.equal(self.labels_col, self.class_index), to=self.layout.np_dtype)

    @cached_property
    def true_log_prob(self) -> Var:
        """log p_{i, y_i}, [N]: z_y − lse from logits (one gather, no [N, C] log-softmax)."""
        if self.from_logits:  # ≤ 0 exactly (one rounding could make it positive when p_y → 1)
            log_p = op.sub(self.at_label(self.given), op.squeeze(self.logsumexp, self.ints(1)))
            return op.clip(log_p, None, self.const(0.0))
        return self.at_label(self.log_probs)

    @cached_property
    def true_prob(self) -> Var:
        return op.exp(self.true_log_prob)

    @cached_property
    def cross_entropy(self) -> Var:
        """ℓ_i = −log p_{i,y_i} (labels) or −Σ_c q_ic log p_ic (soft targets), [N]."""
        if self.has_labels:
            return op.neg(self.true_log_prob)
        return op.neg(self.row_sum(op.mul(self.targets, self.log_probs)))

    @cached_property
    def brier(self) -> Var:
        """Σ_c (p_c − t_c)², [N]; with labels Σp² − 2p_y + 1 (no one-hot matrix)."""
        if self.has_labels:
            return op.add(op.sub(self.sum_sq_probs, op.mul(self.const(2.0), self.true_prob)), self.const(1.0))
        return op.reduce_sum_square(op.sub(self.probs, self.targets), self.ints(-1), keepdims=0)

    # ---- multilabel: per-label sigmoids against a multi-hot truth -----------------------------------
    @property
    def multilabel(self) -> bool:
        return self.layout.task == "multilabel"

    @cached_property
    def truth_mask(self) -> Var:
        """The multi-hot truth [N, C]: the targets, or the label sets scattered into a boolean zero matrix (a
        chunk's rows only, one byte a cell: the scatter's copy costs a quarter of a float matrix's)."""
        if self.layout.target_kind != "label_sets":
            return self.targets
        zeros = op.constant_of_shape(op.shape(self.given), value=np.array([False]))
        at = op.concat([op.unsqueeze(self.inputs[k], self.ints(1)) for k in ("label_rows", "label_indices")], axis=1)
        trues = op.constant_of_shape(op.shape(self.inputs["label_rows"]), value=np.array([True]))
        return op.scatter_nd(zeros, at, trues)

    @cached_property
    def truth(self) -> Var:
        """The multi-hot truth [N, C] in the scores' dtype."""
        mask = self.truth_mask
        return mask if self.layout.target_kind != "label_sets" else op.cast(mask, to=self.layout.np_dtype)

    def truth_at(self, index: Var) -> Var:
        """Whether each label of `index` [N, k] is true, [N, k] in the scores' dtype."""
        hits = op.gather_elements(self.truth_mask, index, axis=1)
        return hits if self.layout.target_kind != "label_sets" else op.cast(hits, to=self.layout.np_dtype)

    @cached_property
    def positives(self) -> Var:
        """|P_i|, the true labels per row, [N] (from the CSR rows, not the dense matrix, for label sets)."""
        if self.layout.target_kind != "label_sets":
            return self.row_sum(self.targets)
        rows = self.inputs["label_rows"]
        zeros = op.constant_of_shape(op.shape(self.given, end=1), value=np.array([0.0], self.layout.np_dtype))
        ones = op.constant_of_shape(op.shape(rows), value=np.array([1.0], self.layout.np_dtype))
        return op.scatter_elements(zeros, rows, ones, reduction="add")

    @cached_property
    def top(self) -> tuple[Var, Var]:
        """The `top_depth` highest scores of each row and their label indices, [N, depth] each (onnxruntime's
        TopK: ties to the lower index), shared by every ranking metric and the top label."""
        values, index = op.top_k(self.given, self.ints(self.top_depth), axis=-1, largest=1, sorted=1)
        return values, index

    @cached_property
    def sigmoid(self) -> Var:
        """σ(z) per label, [N, C]."""
        return op.sigmoid(self.given)

    # ---- top label: ties go to the lowest index (ArgMax select_last_index=0) ----------------------
    @cached_property
    def prediction(self) -> Var:
        if self.multilabel:  # the first of the shared top-k
            return op.squeeze(op.slice(self.top[1], self.ints(0), self.ints(1), self.ints(1)), self.ints(1))
        return op.arg_max(self.scores, axis=-1, keepdims=0)

    @cached_property
    def prediction_col(self) -> Var:
        return op.unsqueeze(self.prediction, self.ints(1))

    @cached_property
    def confidence(self) -> Var:
        """max_k p_k, [N]: exp(max z − s)/S from logits; multilabel: the top label's sigmoid."""
        if self.multilabel:
            return op.sigmoid(op.squeeze(self.row_max, self.ints(1)))
        if self.from_logits:
            top = op.div(op.exp(op.sub(self.row_max, self.shift)), self.exp_sum)
            return op.squeeze(op.clip(top, None, self.const(1.0)), self.ints(1))
        return op.reduce_max(self.probs, self.ints(-1), keepdims=0)

    @cached_property
    def reference_labels(self) -> Var:
        """Labels, or the argmax of soft targets (for accuracy-type metrics)."""
        if self.has_labels:
            return self.labels
        return op.arg_max(self.targets, axis=-1, keepdims=0)

    @cached_property
    def reference_col(self) -> Var:
        """[N, 1] reference labels (the labels, or the argmax of soft targets)."""
        return self.labels_col if self.has_labels else op.unsqueeze(self.reference_labels, self.ints(1))

    @cached_property
    def correct(self) -> Var:
        """1[ŷ = y] as floats, [N]; multilabel: whether the top label is a true one."""
        if self.multilabel:
            return op.squeeze(self.truth_at(self.prediction_col), self.ints(1))
        return op.cast(op.equal(self.prediction, self.reference_labels), to=self.layout.np_dtype)

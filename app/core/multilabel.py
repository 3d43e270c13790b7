"""Multi-label and extreme-classification metrics as mergeable states (api.md, "Multi-label, extreme,
cosine-margin and bag-level evaluation").

Ranking metrics take the top k labels of each row with onnxruntime's `TopK` (ties to the lower label
index) and gather the multi-hot truth there; threshold metrics compare σ(z) ≥ threshold with the truth.
Every state is a weighted sum (or a per-label vector of sums), so chunked runs give one-shot numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import spox.opset.ai.onnx.v21 as op
from pydantic import Field
from spox import Var

from app.core.calibration_error import BinStats, calibration_gap
from app.core.graph_context import GraphContext, scalar, uniform_bin_index
from app.core.specs import TermSpec

State = dict[str, np.ndarray]
TopK = Field(5, ge=1, description="How many top-ranked labels (ties go to the lower label index).")
Threshold = Field(0.5, gt=0, lt=1, allow_inf_nan=False, description="A label is predicted when σ(z) ≥ threshold.")


class PrecisionAtK(TermSpec):
    """P@k: mean over rows of |top-k ∩ P| / k."""

    name: Literal["precision_at_k"]
    k: int = TopK


class RecallAtK(TermSpec):
    """R@k: mean over rows of |top-k ∩ P| / |P|."""

    name: Literal["recall_at_k"]
    k: int = TopK


class NdcgAtK(TermSpec):
    """nDCG@k: binary gains, log2 discounts, normalised by the ideal DCG of min(k, |P|) positives."""

    name: Literal["ndcg_at_k"]
    k: int = TopK


class Propensity(TermSpec):
    """Inverse propensities w_l = 1 + C·(N_l + B)^−A, C = (ln N_train − 1)(B + 1)^A (Jain et al. 2016, as
    pyxclib's `compute_inv_propesity`), from the request's `label_frequencies` N_l and `n_train`."""

    k: int = TopK
    a: float = Field(0.55, gt=0, allow_inf_nan=False, description="A of the propensity model.")
    b: float = Field(1.5, ge=0, allow_inf_nan=False, description="B of the propensity model.")


class PspAtK(Propensity):
    """PSP@k (pyxclib's `psprecision`): mean over rows of Σ_{top-k} y·w / k over the same mean for the
    ranking by y·w."""

    name: Literal["psp_at_k"]


class PsndcgAtK(Propensity):
    """PSnDCG@k (pyxclib's `psndcg`): mean over rows of Σ_{top-k} y·w / log2(1 + rank) over the row's binary
    ideal DCG@k, over the same mean for the ranking by y·w."""

    name: Literal["psndcg_at_k"]


class HammingLoss(TermSpec):
    """Share of (row, label) pairs whose prediction σ(z) ≥ threshold differs from the truth."""

    name: Literal["hamming_loss"]
    threshold: float = Threshold


class MicroF1(TermSpec):
    """2·TP / (2·TP + FP + FN) over all (row, label) pairs; 0 when there is neither a prediction nor a truth."""

    name: Literal["micro_f1"]
    threshold: float = Threshold


class MacroF1(TermSpec):
    """Mean over labels of each label's F1, 0 for a label never predicted nor true (scikit-learn's
    `f1_score(average="macro", zero_division=0)`)."""

    name: Literal["macro_f1"]
    threshold: float = Threshold


class SubsetAccuracy(TermSpec):
    """Share of rows whose predicted label set equals the true one (exact match)."""

    name: Literal["subset_accuracy"]
    threshold: float = Threshold


class MultilabelEce(TermSpec):
    """Mean over labels of the binary ECE of σ(z_l) against the 0/1 truth (uniform bins of σ, as
    `classwise_ece` bins p_c)."""

    name: Literal["multilabel_ece"]
    bins: int = Field(15, ge=1, le=10_000, description="Number of bins.")


RANKED = ("precision_at_k", "recall_at_k", "ndcg_at_k", "psp_at_k", "psndcg_at_k")  # need a positive per row


# ---- shared intermediates -----------------------------------------------------------------------------


def depth(metrics: Iterable[TermSpec]) -> int:
    """The deepest k of a plan's ranking metrics (1 without any: the top label)."""
    return max([int(getattr(spec, "k", 1)) for spec in metrics], default=1)


def _top(ctx: GraphContext, k: int) -> tuple[Var, Var]:
    """The top-k label indices [N, k] and whether each is a true label [N, k]: the first k of the context's
    one TopK (built once per k)."""

    def build() -> tuple[Var, Var]:
        index = ctx.top[1] if k == ctx.top_depth else op.slice(ctx.top[1], ctx.ints(0), ctx.ints(k), ctx.ints(1))
        return index, ctx.truth_at(index)

    return ctx.shared(("top_k", k), build)


def _discounts(ctx: GraphContext, k: int) -> Var:
    """1 / log2(1 + rank) for ranks 1..k, [1, k]."""
    return ctx.const(1.0 / np.log2(np.arange(2, k + 2))[None, :])


def _ideal_dcg(ctx: GraphContext, k: int) -> Var:
    """The binary ideal DCG@k of each row: the discounts of its first min(k, |P|) ranks summed, [N]."""
    cumulative = ctx.const(np.cumsum(1.0 / np.log2(np.arange(2, k + 2))))
    count = op.clip(op.cast(ctx.positives, to=np.int64), scalar(1, np.int64), scalar(k, np.int64))
    return op.gather(cumulative, op.sub(count, scalar(1, np.int64)))


def _inverse_propensity(ctx: GraphContext, a: float, b: float) -> Var:
    """w_l per label [1, C] from the fed `label_frequencies` and `n_train`."""

    def build() -> Var:
        c = op.mul(op.sub(op.log(ctx.inputs["n_train"]), ctx.const(1.0)), ctx.const((b + 1.0) ** a))
        decay = op.pow(op.add(ctx.inputs["label_frequencies"], ctx.const(b)), ctx.const(-a))
        return op.unsqueeze(op.add(ctx.const(1.0), op.mul(c, decay)), ctx.ints(0))

    return ctx.shared(("inverse_propensity", a, b), build)


def _predicted(ctx: GraphContext, threshold: float) -> Var:
    """1[σ(z) ≥ threshold] per label, [N, C] in the scores' dtype (built once per threshold)."""
    return ctx.shared(
        ("predicted", threshold),
        lambda: op.cast(op.greater_or_equal(ctx.sigmoid, ctx.const(threshold)), to=ctx.layout.np_dtype),
    )


def _weighted_mean(ctx: GraphContext, value: Var) -> dict[str, Var]:
    return {"sum": ctx.weighted_total(value), "weight": ctx.total(ctx.weights)}


# ---- state fragments ----------------------------------------------------------------------------------


def _precision(ctx: GraphContext, spec: PrecisionAtK) -> Var:
    return op.div(ctx.row_sum(_top(ctx, spec.k)[1]), ctx.const(float(spec.k)))


def _recall(ctx: GraphContext, spec: RecallAtK) -> Var:
    return op.div(ctx.row_sum(_top(ctx, spec.k)[1]), ctx.positives)


def _ndcg(ctx: GraphContext, spec: NdcgAtK) -> Var:
    gains = op.mul(_top(ctx, spec.k)[1], _discounts(ctx, spec.k))
    return op.div(ctx.row_sum(gains), _ideal_dcg(ctx, spec.k))


def _wrong_labels(ctx: GraphContext, threshold: float) -> Var:
    """How many labels of each row the threshold gets wrong, [N]."""
    return ctx.row_sum(op.abs(op.sub(_predicted(ctx, threshold), ctx.truth)))


def _hamming(ctx: GraphContext, spec: HammingLoss) -> Var:
    return op.div(_wrong_labels(ctx, spec.threshold), ctx.num_classes_f)


def _subset_accuracy(ctx: GraphContext, spec: SubsetAccuracy) -> Var:
    return op.cast(op.equal(_wrong_labels(ctx, spec.threshold), ctx.const(0.0)), to=ctx.layout.np_dtype)


ROW_VALUES: dict[str, Callable[[GraphContext, Any], Var]] = {
    "precision_at_k": _precision,
    "recall_at_k": _recall,
    "ndcg_at_k": _ndcg,
    "hamming_loss": _hamming,
    "subset_accuracy": _subset_accuracy,
}  # the metrics that are weighted means of a per-row value (stored per row for the gate's bootstrap)


def row_value(ctx: GraphContext, spec: TermSpec) -> Var:
    """A plain-mean metric's per-row value, built once per graph (its state and the stored rows share it)."""
    return ctx.shared(("row_value", spec), lambda: ROW_VALUES[spec.name](ctx, spec))


def mean_state(ctx: GraphContext, spec: TermSpec) -> dict[str, Var]:
    return _weighted_mean(ctx, row_value(ctx, spec))


def propensity_state(ctx: GraphContext, spec: Propensity) -> dict[str, Var]:
    """Σ_i w_i·(ranked value) and Σ_i w_i·(the value of the ranking by y·w): PSP@k is their ratio."""
    k, index_hits = spec.k, _top(ctx, spec.k)
    weights = _inverse_propensity(ctx, spec.a, spec.b)
    gains = op.mul(index_hits[1], op.gather_elements(op.expand(weights, op.shape(ctx.given)), index_hits[0], axis=1))
    ideal, _ = op.top_k(op.mul(ctx.truth, weights), ctx.ints(k), axis=-1, largest=1, sorted=1)
    if spec.name == "psndcg_at_k":
        discounts, normaliser = _discounts(ctx, k), _ideal_dcg(ctx, k)
        value = op.div(ctx.row_sum(op.mul(gains, discounts)), normaliser)
        best = op.div(ctx.row_sum(op.mul(ideal, discounts)), normaliser)
    else:
        value, best = ctx.row_sum(gains), ctx.row_sum(ideal)  # the 1/k of both cancels in the ratio
    return {"sum": ctx.weighted_total(value), "ideal": ctx.weighted_total(best)}


def counts_state(ctx: GraphContext, spec: MicroF1 | MacroF1) -> dict[str, Var]:
    """Weighted true positives, false positives and false negatives: summed over labels (micro) or per label
    (macro, [C] each: a column sum of the chunk)."""
    predicted, truth = _predicted(ctx, spec.threshold), ctx.truth
    w = op.unsqueeze(ctx.f64(ctx.weights), ctx.ints(1))
    hits = op.mul(ctx.f64(op.mul(predicted, truth)), w)
    cells = {
        "tp": hits,
        "fp": op.sub(op.mul(ctx.f64(predicted), w), hits),
        "fn": op.sub(op.mul(ctx.f64(truth), w), hits),
    }
    if spec.name == "micro_f1":
        return {part: op.reduce_sum(value, keepdims=0) for part, value in cells.items()}
    return {part: op.reduce_sum(value, ctx.ints(0), keepdims=0) for part, value in cells.items()}


def ece_state(ctx: GraphContext, spec: MultilabelEce) -> dict[str, Var]:
    """Per (label, bin) sums of w, w·σ and w·truth: one scatter over the flattened index l·B + bin."""
    bins = spec.bins
    index = op.add(uniform_bin_index(ctx.sigmoid, bins), op.mul(ctx.class_index, scalar(bins, np.int64)))
    size = op.reshape(op.mul(ctx.num_classes, scalar(bins, np.int64)), ctx.ints(1))
    w = op.expand(op.unsqueeze(ctx.f64(ctx.weights), ctx.ints(1)), op.shape(ctx.given))

    def flat(x: Var) -> Var:
        return op.reshape(x, ctx.ints(-1))

    flat_index = flat(index)
    return {
        "count": ctx.scatter_total(flat_index, flat(w), size),
        "confidence": ctx.scatter_total(flat_index, flat(op.mul(w, ctx.f64(ctx.sigmoid))), size),
        "accuracy": ctx.scatter_total(flat_index, flat(op.mul(w, ctx.f64(ctx.truth))), size),
    }


# ---- finalize -----------------------------------------------------------------------------------------


def finalize_mean(state: State, spec: TermSpec) -> float:
    return float(state["sum"] / state["weight"])


def finalize_propensity(state: State, spec: TermSpec) -> float:
    return float(state["sum"] / state["ideal"])


def f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2·TP / (2·TP + FP + FN), 0 where the denominator is 0."""
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1.0), 0.0)


def finalize_f1(state: State, spec: TermSpec) -> float:
    return float(np.mean(f1(state["tp"], state["fp"], state["fn"])))


def finalize_ece(state: State, spec: MultilabelEce) -> float:
    parts = [state[k].reshape(-1, spec.bins) for k in ("count", "confidence", "accuracy")]
    return float(np.mean([calibration_gap(BinStats(*label), "l1") for label in zip(*parts, strict=True)]))

"""Metrics as mergeable states: a graph fragment emits per-chunk partial sums (or, for sort-based
metrics, the rows they need), states merge by addition (or concatenation), and a finalize step turns a
merged state into one number (the torchmetrics update/merge/compute pattern).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, Union

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from pydantic import Field
from spox import Tensor, Var, argument, build

from app.core import multilabel
from app.core.calibration_error import BinStats, Norm, calibration_gap, quantile_bin_stats, smooth_ece
from app.core.classification import (
    F1,
    RANKED_PARTS,
    AveragePrecision,
    BalancedAccuracy,
    CohenKappa,
    ConfusionMatrix,
    Mcc,
    Precision,
    Recall,
    RocAuc,
    Thresholded,
    averaged,
    balanced_accuracy,
    cohen_kappa,
    confusion_state,
    confusion_values,
    mcc,
    predicted_class,
    ranked,
    ranking_state,
)
from app.core.graph_context import GraphContext, Task, class_range, scalar, uniform_bin_index
from app.core.graphrun import mapped
from app.core.runtime import SessionCache
from app.core.selective import aurc
from app.core.specs import MetricValue, TermSpec

Bins = Annotated[int, Field(ge=1, le=10_000, description="Number of bins.")]
State = dict[str, np.ndarray]


class Accuracy(Thresholded):
    """Share of rows whose argmax (ties → lowest index) equals the label (§4.1); with `threshold` (C = 2)
    the predicted class is 1 iff p₁ ≥ threshold."""

    name: Literal["accuracy"]


class TopKAccuracy(TermSpec):
    """Share of rows whose label (with soft targets: their argmax) is among the k highest scores (ties →
    lower index ranks first)."""

    name: Literal["top_k_accuracy"]
    k: int = Field(5, ge=1)


class NllMetric(TermSpec):
    """Mean negative log-likelihood from log-softmax, never clipped (§4.1)."""

    name: Literal["nll"]


class BrierMetric(TermSpec):
    """Multiclass Brier score (1/N) Σ_i Σ_c (p_ic − 1[y_i = c])², range [0, 2] (§4.1)."""

    name: Literal["brier"]


class Ece(TermSpec):
    """Top-label expected calibration error (Naeini et al. 2015; api.md pins the binning)."""

    name: Literal["ece"]
    bins: Bins = 15
    binning: Literal["uniform", "quantile"] = "uniform"
    norm: Norm = "l1"


class Mce(TermSpec):
    """Maximum calibration error over non-empty uniform bins (§4.1)."""

    name: Literal["mce"]
    bins: Bins = 15


class ClasswiseEce(TermSpec):
    """Class-wise ECE (Kull et al. 2019): mean over classes of the binary ECE of p_c vs 1[y = c] (§4.1)."""

    name: Literal["classwise_ece"]
    bins: Bins = 15


class SmoothEce(TermSpec):
    """Smooth ECE with a reflected Gaussian kernel at its fixed point (Błasiok & Nakkiran 2023, §4.1)."""

    name: Literal["smooth_ece"]


class Entropy(TermSpec):
    """Mean predictive entropy −Σ_c p_c log p_c, in nats."""

    name: Literal["entropy"]


class Aurc(TermSpec):
    """Area under the risk–coverage curve, mean convention (Geifman & El-Yaniv 2017, §4.1)."""

    name: Literal["aurc"]


class SoftmaxCollapse(TermSpec):
    """Share of rows that float32 cannot hold as a softmax, decided in float64 from the logits so that every
    CPU counts the same (api.md): with m = max_j z_j and S = Σ_{j≠ŷ} exp(z_j − m), a row collapses when
    S < 2⁻²⁴ (1 + S rounds to 1 in float32) or m − min_j z_j > 150·ln 2 (exp underflows to 0 in float32).
    With probabilities, z = log p."""

    name: Literal["softmax_collapse"]


# ---- state fragments ------------------------------------------------------------------------------------


def _weighted_mean_state(ctx: GraphContext, value: Var) -> dict[str, Var]:
    return {"sum": ctx.weighted_total(value), "weight": ctx.total(ctx.weights)}


def _finalize_mean(state: State, spec: TermSpec) -> float:
    return float(state["sum"] / state["weight"])


def uniform_bins(confidence: np.ndarray, bins: int, cache: SessionCache | None = None) -> np.ndarray:
    """The uniform bin of each confidence, by the metrics' own fragment (int64 [N])."""
    dtype = confidence.dtype

    def graph() -> onnx.ModelProto:
        p = argument(Tensor(dtype, ("N",)))
        return build({"confidence": p}, {"bin": uniform_bin_index(p, bins)})

    return mapped(f"uniform-bins:{bins}:{dtype}", graph, {"confidence": confidence}, cache)


def uniform_bin_state(ctx: GraphContext, bins: int) -> dict[str, Var]:
    """Σw, Σw·confidence and Σw·correct per uniform bin of the top-label confidence; built once per
    bin count and shared (ece, mce and the reliability table with equal bins scatter once)."""
    return ctx.shared(("uniform_bins", bins), lambda: _uniform_bin_sums(ctx, bins))


def _uniform_bin_sums(ctx: GraphContext, bins: int) -> dict[str, Var]:
    index, size = uniform_bin_index(ctx.confidence, bins), ctx.ints(bins)
    w = ctx.f64(ctx.weights)
    return {
        "count": ctx.scatter_total(index, w, size),
        "confidence": ctx.scatter_total(index, op.mul(w, ctx.f64(ctx.confidence)), size),
        "accuracy": ctx.scatter_total(index, op.mul(w, ctx.f64(ctx.correct)), size),
    }


def bin_stats(state: State) -> BinStats:
    return BinStats(state["count"], state["confidence"], state["accuracy"])


def _rows_state(ctx: GraphContext) -> dict[str, Var]:
    """The rows a sort-based metric keeps: confidence, correctness and weight (float64)."""
    return {
        "rows_confidence": ctx.f64(ctx.confidence),
        "rows_correct": ctx.f64(ctx.correct),
        "rows_weight": ctx.f64(ctx.weights),
    }


def _rows(state: State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return state["rows_confidence"], state["rows_correct"], state["rows_weight"]


def _accuracy(ctx: GraphContext, p: Accuracy) -> dict[str, Var]:
    if p.threshold is None:
        return _weighted_mean_state(ctx, ctx.correct)
    hit = op.equal(predicted_class(ctx, p.threshold), ctx.reference_labels)
    return _weighted_mean_state(ctx, op.cast(hit, to=ctx.layout.np_dtype))


def _top_k(ctx: GraphContext, p: TopKAccuracy) -> dict[str, Var]:
    scores = ctx.scores
    true_score = op.gather_elements(scores, ctx.reference_col, axis=1)
    above = op.cast(op.greater(scores, true_score), to=np.int64)
    tied_before = op.cast(
        op.and_(op.equal(scores, true_score), op.less(ctx.class_index, ctx.reference_col)), to=np.int64
    )
    rank = ctx.row_sum(op.add(above, tied_before))
    hit = op.cast(op.less(rank, scalar(p.k, np.int64)), to=ctx.layout.np_dtype)
    return _weighted_mean_state(ctx, hit)


def _nll(ctx: GraphContext, p: TermSpec) -> dict[str, Var]:
    return _weighted_mean_state(ctx, ctx.cross_entropy)


def _brier(ctx: GraphContext, p: TermSpec) -> dict[str, Var]:
    return _weighted_mean_state(ctx, ctx.brier)


def _entropy(ctx: GraphContext, p: TermSpec) -> dict[str, Var]:
    return _weighted_mean_state(ctx, op.neg(ctx.row_sum(op.mul(ctx.probs, ctx.log_probs))))


COLLAPSE_SUM = 2.0**-24  # below it, the float32 sum 1 + S rounds to 1 (api.md)
COLLAPSE_SPREAD = 150.0 * np.log(2.0)  # beyond it, exp(z_j − m) underflows to 0 in float32 (api.md)


def _softmax_collapse(ctx: GraphContext, p: TermSpec) -> dict[str, Var]:
    """The pinned exact rule of api.md, in float64 for both input dtypes (no float32 softmax is consulted:
    whether one rounds to 0 or 1 depends on the SIMD kernel)."""
    if ctx.from_logits:
        z = ctx.f64(ctx.given)
    else:  # log p; p = 0 gives log of the smallest float64 normal, far beyond the spread threshold
        z = op.log(op.clip(ctx.f64(ctx.given), scalar(np.finfo(np.float64).tiny, np.float64), None))
    top = op.reduce_max(z, ctx.ints(-1), keepdims=1)
    others = op.not_(op.equal(class_range(z), op.arg_max(z, axis=-1, keepdims=1)))
    rest = ctx.row_sum(op.where(others, op.exp(op.sub(z, top)), scalar(0.0, np.float64)))
    spread = op.squeeze(op.sub(top, op.reduce_min(z, ctx.ints(-1), keepdims=1)), ctx.ints(1))
    collapsed = op.or_(
        op.less(rest, scalar(COLLAPSE_SUM, np.float64)), op.greater(spread, scalar(COLLAPSE_SPREAD, np.float64))
    )
    return _weighted_mean_state(ctx, op.cast(collapsed, to=np.float64))


def _ece(ctx: GraphContext, p: Ece) -> dict[str, Var]:
    return uniform_bin_state(ctx, p.bins) if p.binning == "uniform" else _rows_state(ctx)


def _finalize_ece(state: State, p: Ece) -> float:
    if p.binning == "uniform":
        return calibration_gap(bin_stats(state), p.norm)
    return calibration_gap(quantile_bin_stats(*_rows(state), bins=p.bins), p.norm)


def _mce(ctx: GraphContext, p: Mce) -> dict[str, Var]:
    return uniform_bin_state(ctx, p.bins)


def _classwise_ece(ctx: GraphContext, p: ClasswiseEce) -> dict[str, Var]:
    """Per (class, bin) sums over all rows and classes: one scatter over the flattened [N·C] index c·B + bin."""
    bins = p.bins
    index = op.add(uniform_bin_index(ctx.probs, bins), op.mul(ctx.class_index, scalar(bins, np.int64)))
    flat_index = op.reshape(index, ctx.ints(-1))
    size = op.reshape(op.mul(ctx.num_classes, scalar(bins, np.int64)), ctx.ints(1))
    w = op.expand(op.unsqueeze(ctx.f64(ctx.weights), ctx.ints(1)), op.shape(ctx.probs))

    def flat(x: Var) -> Var:
        return op.reshape(x, ctx.ints(-1))

    return {
        "count": ctx.scatter_total(flat_index, flat(w), size),
        "confidence": ctx.scatter_total(flat_index, flat(op.mul(w, ctx.f64(ctx.probs))), size),
        "accuracy": ctx.scatter_total(flat_index, flat(op.mul(w, ctx.f64(ctx.onehot))), size),
    }


def _finalize_classwise(state: State, p: ClasswiseEce) -> float:
    per_class = [
        calibration_gap(BinStats(*(state[k].reshape(-1, p.bins)[c] for k in ("count", "confidence", "accuracy"))), "l1")
        for c in range(state["count"].size // p.bins)
    ]
    return float(np.mean(per_class))


def _rows_fragment(ctx: GraphContext, p: TermSpec) -> dict[str, Var]:
    return _rows_state(ctx)


@dataclass(frozen=True)
class Resampling:
    """How the gate's bootstrap rebuilds a metric from an evaluation's stored per-row arrays: the mean of
    each row's correctness, the uniform-bin L1 ECE of (confidence, correctness) with `uniform_bins`, the
    mean of the per-row values of a plain (unweighted, unsmoothed) loss named in `losses`, or the metric
    of the confusion matrix of (label, argmax prediction)."""

    statistic: Literal["correct", "ece", "loss", "confusion", "rows"]
    bins: int = 15
    losses: tuple[str, ...] = ()


def _not_resampled(spec: TermSpec) -> Resampling | None:
    return None


def _accuracy_resampling(spec: Accuracy) -> Resampling | None:
    """The stored per-row prediction is the argmax: a thresholded accuracy is not resampled from it."""
    return Resampling("correct") if spec.threshold is None else None


def _confusion_resampling(spec: Thresholded) -> Resampling | None:
    """The stored prediction is the argmax: a thresholded metric, or a list (`average: none`), is not resampled."""
    return Resampling("confusion") if spec.threshold is None and getattr(spec, "average", None) != "none" else None


def _ece_resampling(spec: Ece) -> Resampling | None:
    return Resampling("ece", bins=spec.bins) if spec.binning == "uniform" and spec.norm == "l1" else None


@dataclass(frozen=True)
class MetricDef:
    """A metric's facts: its parameters, its state fragment and finalize step, which state parts are
    kept rows (concatenated on merge, torchmetrics' dist_reduce_fx="cat"; every other part is summed),
    whether higher is better (the gate's direction), how the bootstrap resamples it, and how many sums
    its widest summed part holds for C classes (what a slice's per-group copy costs), and the task it
    evaluates (multiclass labels, or multilabel sets)."""

    spec: type[TermSpec]
    state: Callable[[GraphContext, TermSpec], dict[str, Var]]
    finalize: Callable[[State, TermSpec], MetricValue]
    kept_parts: frozenset[str] = frozenset()
    higher_is_better: bool = False
    resampling: Callable[[TermSpec], Resampling | None] = _not_resampled
    width: Callable[[TermSpec, int], int] = lambda spec, classes: int(getattr(spec, "bins", 1))
    task: Task = "multiclass"


ROWS_PARTS = frozenset({"rows_confidence", "rows_correct", "rows_weight"})  # what `_rows_state` keeps


def _def(
    spec: type[TermSpec],
    state: Callable[..., dict[str, Var]],
    finalize: Callable[..., MetricValue],
    kept_parts: frozenset[str] = frozenset(),
    higher_is_better: bool = False,
    resampling: Callable[..., Resampling | None] = _not_resampled,
    width: Callable[..., int] = MetricDef.width,
    task: Task = "multiclass",
) -> tuple[str, MetricDef]:
    name = spec.model_fields["name"].annotation.__args__[0]  # type: ignore[union-attr]
    return name, MetricDef(spec, state, finalize, kept_parts, higher_is_better, resampling, width, task)


def _multilabel(
    spec: type[TermSpec],
    state: Callable[..., dict[str, Var]],
    finalize: Callable[..., MetricValue],
    higher_is_better: bool = True,
) -> tuple[str, MetricDef]:
    """A multilabel metric; one that is a mean of per-row values is resampled from them."""
    name = spec.model_fields["name"].annotation.__args__[0]  # type: ignore[union-attr]
    rows = name in multilabel.ROW_VALUES
    return _def(
        spec,
        state,
        finalize,
        higher_is_better=higher_is_better,
        resampling=(lambda p: Resampling("rows")) if rows else _not_resampled,
        width=lambda p, classes: classes * int(getattr(p, "bins", 1)),
        task="multilabel",
    )


METRICS: dict[str, MetricDef] = dict(
    [
        _def(Accuracy, _accuracy, _finalize_mean, higher_is_better=True, resampling=_accuracy_resampling),
        _def(TopKAccuracy, _top_k, _finalize_mean, higher_is_better=True),
        _def(NllMetric, _nll, _finalize_mean, resampling=lambda p: Resampling("loss", losses=("nll", "cross_entropy"))),
        _def(BrierMetric, _brier, _finalize_mean, resampling=lambda p: Resampling("loss", losses=("brier",))),
        _def(Ece, _ece, _finalize_ece, kept_parts=ROWS_PARTS, resampling=_ece_resampling),
        _def(Mce, _mce, lambda s, p: calibration_gap(bin_stats(s), "max")),
        _def(ClasswiseEce, _classwise_ece, _finalize_classwise, width=lambda p, classes: classes * p.bins),
        _def(SmoothEce, _rows_fragment, lambda s, p: smooth_ece(*_rows(s)), kept_parts=ROWS_PARTS),
        _def(Entropy, _entropy, _finalize_mean),
        _def(Aurc, _rows_fragment, lambda s, p: aurc(*_rows(s)), kept_parts=ROWS_PARTS),
        _def(SoftmaxCollapse, _softmax_collapse, _finalize_mean),
        *(
            _def(spec, confusion_state, finalize, higher_is_better=True, resampling=_confusion_resampling)
            for spec, finalize in (
                (Precision, averaged),
                (Recall, averaged),
                (F1, averaged),
                (BalancedAccuracy, balanced_accuracy),
                (Mcc, mcc),
                (CohenKappa, cohen_kappa),
            )
        ),
        _def(ConfusionMatrix, confusion_state, confusion_values),
        *(
            _def(spec, ranking_state, ranked, RANKED_PARTS, higher_is_better=True)
            for spec in (RocAuc, AveragePrecision)
        ),
        *(
            _multilabel(spec, multilabel.mean_state, multilabel.finalize_mean)
            for spec in (multilabel.PrecisionAtK, multilabel.RecallAtK, multilabel.NdcgAtK, multilabel.SubsetAccuracy)
        ),
        _multilabel(multilabel.PspAtK, multilabel.propensity_state, multilabel.finalize_propensity),
        _multilabel(multilabel.PsndcgAtK, multilabel.propensity_state, multilabel.finalize_propensity),
        _multilabel(multilabel.HammingLoss, multilabel.mean_state, multilabel.finalize_mean, higher_is_better=False),
        _multilabel(multilabel.MicroF1, multilabel.counts_state, multilabel.finalize_f1),
        _multilabel(multilabel.MacroF1, multilabel.counts_state, multilabel.finalize_f1),
        _multilabel(multilabel.MultilabelEce, multilabel.ece_state, multilabel.finalize_ece, higher_is_better=False),
    ]
)

if TYPE_CHECKING:
    MetricSpec = TermSpec
else:  # a discriminated union over the registry's parameter models (documents every name in OpenAPI)
    MetricSpec = Annotated[Union[tuple(d.spec for d in METRICS.values())], Field(discriminator="name")]  # noqa: UP007
DEFAULT_METRICS: tuple[str, ...] = ("accuracy", "nll", "brier", "ece", "mce")
DEFAULT_METRICS_WIDE: tuple[str, ...] = (*DEFAULT_METRICS, "top_k_accuracy")  # when C > 5
DEFAULT_MULTILABEL_METRICS: tuple[str, ...] = ("precision_at_k", "ndcg_at_k", "hamming_loss", "multilabel_ece")

"""The classic classification metrics (api.md, "Binary models, the classic classification metrics"), all
read from one mergeable state: the sample-weighted C × C confusion matrix (rows = true class, columns =
predicted), scattered in the fused graph once per threshold and summed over chunks. Each finalize
follows scikit-learn's definition with `labels=range(C)` and `zero_division=0`."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import numpy as np
import spox.opset.ai.onnx.v21 as op
from pydantic import Field
from spox import Var

from app.core.graph_context import GraphContext, scalar
from app.core.specs import MetricValue, TermSpec

Threshold = Annotated[
    float | None,
    Field(None, ge=0, le=1, allow_inf_nan=False, description="C = 2 only: class 1 iff p₁ ≥ threshold."),
]
Average = Literal["macro", "micro", "weighted", "binary", "none"]


class Thresholded(TermSpec):
    """A metric of the predicted class: argmax p (ties to the lowest index), or with `threshold` (C = 2)
    class 1 iff p₁ ≥ threshold."""

    threshold: Threshold = None


class Averaged(Thresholded):
    """A per-class metric averaged over the C classes: `macro` (unweighted mean), `micro` (from the
    summed counts), `weighted` (by each class's true weight), `binary` (C = 2: class 1's value), or
    `none` (the C values, a list)."""

    average: Average = "macro"


class Precision(Averaged):
    """tp / predicted per class, 0 for a class never predicted (scikit-learn's `precision_score`)."""

    name: Literal["precision"]


class Recall(Averaged):
    """tp / true per class, 0 for a class without rows (scikit-learn's `recall_score`)."""

    name: Literal["recall"]


class F1(Averaged):
    """2·tp / (predicted + true) per class, the harmonic mean of precision and recall (`f1_score`)."""

    name: Literal["f1"]


class BalancedAccuracy(Thresholded):
    """Mean recall over the classes that have true rows (scikit-learn's `balanced_accuracy_score`)."""

    name: Literal["balanced_accuracy"]


class Mcc(Thresholded):
    """Matthews correlation coefficient, multiclass form (Gorodkin 2004; `matthews_corrcoef`), 0 when
    undefined."""

    name: Literal["mcc"]


class CohenKappa(Thresholded):
    """Cohen's kappa: 1 − observed disagreement / disagreement expected from the marginals
    (`cohen_kappa_score`); null when no disagreement can be expected."""

    name: Literal["cohen_kappa"]


class ConfusionMatrix(Thresholded):
    """C × C sample-weighted counts, rows = true class, columns = predicted (`confusion_matrix`)."""

    name: Literal["confusion_matrix"]


class Ranked(TermSpec):
    """A ranking metric of the probabilities: for C = 2 of p₁; for C > 2 one-vs-rest per class, averaged
    `macro` or `weighted` by class prevalence over the classes it is defined for (null when none): ROC-AUC
    needs positive and negative rows, average precision positive rows (all positive: 1, as scikit-learn;
    none: left out, where scikit-learn answers 0 with a warning)."""

    average: Literal["macro", "weighted"] = "macro"


class RocAuc(Ranked):
    """Area under the ROC curve, ties with half credit (scikit-learn's `roc_auc_score`)."""

    name: Literal["roc_auc"]


class AveragePrecision(Ranked):
    """Σ_k (R_k − R_{k−1})·P_k over the distinct scores, descending (`average_precision_score`)."""

    name: Literal["average_precision"]


RANKED_PARTS = frozenset({"rows_probs", "rows_truth", "rows_weight"})


def ranking_state(ctx: GraphContext, spec: TermSpec) -> dict[str, Var]:
    """The rows a ranking metric keeps: probabilities [N, C], the true class and the weight (float64)."""

    def build() -> dict[str, Var]:
        truth = ctx.reference_labels
        # the probabilities in their dtype: a float64 copy ranks alike, at twice the memory and sort time
        return {"rows_probs": ctx.probs, "rows_truth": truth, "rows_weight": ctx.f64(ctx.weights)}

    return ctx.shared("ranking", build)


# One class's curve per task: numpy's sort releases the GIL, so the classes of one evaluation sort on every
# core (1M × 10 float32 on 2 cores: 0.72 s of sorts in one thread, 0.40 s in two).
_SORTS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="caliper-sort")
PARALLEL_ROWS = 1 << 12


def _curve(score: np.ndarray, positive: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives at each distinct score, descending, from (0, 0)."""
    if score.dtype == np.float32 and bool((weight == 1).all()):
        return _unit_curve(score, positive)
    order = np.argsort(-score)  # not stable: rows of equal scores are summed as one group anyway
    score, positive, weight = score[order], positive[order], weight[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the end of each group of equal scores
    tp, fp = np.cumsum(weight * positive)[last], np.cumsum(weight * ~positive)[last]
    return np.r_[0.0, tp], np.r_[0.0, fp]


def _unit_curve(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_curve` of unit-weight float32 scores ≥ 0 without an argsort: each row as one uint64 key, the
    score's bits (which order as the non-negative floats do; + 0 turns −0 into +0) above its positive
    flag, sorted by value (1M rows: 15 ms against argsort's 75 ms, here). Exact: no bit of the score is lost."""
    bits = (score + np.float32(0)).view(np.uint32).astype(np.uint64)
    keys = np.sort((bits << np.uint64(1)) | positive.astype(np.uint64))[::-1]  # descending
    last = np.r_[np.flatnonzero(np.diff(keys >> np.uint64(1))), len(keys) - 1]  # each group of equal scores
    tp = np.cumsum(keys & np.uint64(1))[last].astype(np.float64)
    return np.r_[0.0, tp], np.r_[0.0, (last + 1) - tp]


def _auc(tp: np.ndarray, fp: np.ndarray) -> float:
    return float(np.trapezoid(tp, fp) / (tp[-1] * fp[-1]))  # the trapezoid gives tied rows half credit


def _ap(tp: np.ndarray, fp: np.ndarray) -> float:
    recall, precision = tp / tp[-1], tp[1:] / np.maximum(tp[1:] + fp[1:], np.finfo(np.float64).tiny)
    return float(np.sum(np.diff(recall) * precision))


def ranked(state: dict[str, np.ndarray], spec: Ranked) -> float:
    """ROC-AUC or average precision of the kept rows (NaN, reported null, when no class can be scored)."""
    probs, truth, weight = state["rows_probs"], state["rows_truth"], state["rows_weight"]
    area = _auc if spec.name == "roc_auc" else _ap
    classes = (1,) if probs.shape[1] == 2 else range(probs.shape[1])
    values, prevalence = [], []

    def curve(c: int) -> tuple[np.ndarray, np.ndarray]:
        return _curve(probs[:, c], truth == c, weight)

    threaded = len(classes) > 1 and len(truth) >= PARALLEL_ROWS  # below, a task's hand-off costs more than its sort
    curves = _SORTS.map(curve, classes) if threaded else map(curve, classes)
    for tp, fp in curves:
        if tp[-1] > 0 and (fp[-1] > 0 or spec.name == "average_precision"):  # AP needs no negative rows
            values.append(area(tp, fp))
            prevalence.append(tp[-1])
    if not values:
        return float("nan")
    return float(np.average(values, weights=prevalence if spec.average == "weighted" else None))


def predicted_class(ctx: GraphContext, threshold: float | None) -> Var:
    """argmax p, or class 1 iff p₁ ≥ threshold (compared in float64: every CPU decides alike)."""
    if threshold is None:
        return ctx.prediction
    p1 = op.squeeze(op.slice(ctx.f64(ctx.probs), ctx.ints(1), ctx.ints(2), ctx.ints(1)), ctx.ints(1))
    return op.cast(op.greater_or_equal(p1, scalar(threshold, np.float64)), to=np.int64)


def confusion_state(ctx: GraphContext, spec: Thresholded) -> dict[str, Var]:
    """Σw per (true, predicted) pair as a flat [C·C] float64 state, built once per threshold."""

    def build() -> dict[str, Var]:
        index = op.add(op.mul(ctx.reference_labels, ctx.num_classes), predicted_class(ctx, spec.threshold))
        size = op.reshape(op.mul(ctx.num_classes, ctx.num_classes), ctx.ints(1))
        return {"confusion": ctx.scatter_total(index, ctx.weights, size, per_slot_as_rows=True)}

    return ctx.shared(("confusion", spec.threshold), build)


def confusion_matrix(state: dict[str, np.ndarray]) -> np.ndarray:
    """The C × C matrix of a merged state."""
    flat = state["confusion"]
    classes = math.isqrt(flat.size)
    return flat.reshape(classes, classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    out: np.ndarray = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out


def confusion_values(state: dict[str, np.ndarray], spec: TermSpec) -> MetricValue:
    values: list[list[float]] = confusion_matrix(state).tolist()
    return values


def averaged(state: dict[str, np.ndarray], spec: Averaged) -> MetricValue:
    """Precision, recall or F1 of the confusion matrix, averaged as `spec.average` says."""
    matrix = confusion_matrix(state)
    tp, predicted, true = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    if spec.average == "micro":  # single-label: every row is one tp, or one fp and one fn
        return float(tp.sum() / matrix.sum())
    per_class = {"precision": _ratio(tp, predicted), "recall": _ratio(tp, true), "f1": _ratio(2 * tp, predicted + true)}
    values = per_class[spec.name]
    if spec.average == "none":
        per_class_values: list[float] = values.tolist()
        return per_class_values
    if spec.average == "binary":
        return float(values[1])
    if spec.average == "weighted":
        return float(values @ true / true.sum())
    return float(values.mean())


def balanced_accuracy(state: dict[str, np.ndarray], spec: TermSpec) -> float:
    matrix = confusion_matrix(state)
    true = matrix.sum(1)
    present = true > 0
    return float(np.mean(np.diag(matrix)[present] / true[present]))


def mcc(state: dict[str, np.ndarray], spec: TermSpec) -> float:
    """(c·s − t·p) / √((s² − p·p)(s² − t·t)), t and p the true and predicted class totals."""
    matrix = confusion_matrix(state)
    true, predicted = matrix.sum(1), matrix.sum(0)
    correct, total = np.trace(matrix), matrix.sum()
    denominator = np.sqrt((total**2 - predicted @ predicted) * (total**2 - true @ true))
    return float((correct * total - true @ predicted) / denominator) if denominator > 0 else 0.0


def cohen_kappa(state: dict[str, np.ndarray], spec: TermSpec) -> float:
    """1 − Σ_{i≠j} M_ij / Σ_{i≠j} E_ij, E the outer product of the marginals over the total."""
    matrix = confusion_matrix(state)
    expected = np.outer(matrix.sum(1), matrix.sum(0)) / matrix.sum()
    off = ~np.eye(len(matrix), dtype=bool)
    disagreement = expected[off].sum()
    return float(1.0 - matrix[off].sum() / disagreement) if disagreement > 0 else float("nan")


MAX_ANSWER_CELLS = 1 << 22  # numbers the list-valued metrics may answer in all (≈ 40 MB of JSON)


def answer_cells(spec: TermSpec, classes: int) -> int:
    """How many numbers a metric answers: C² for the confusion matrix, C for `average: none`, else 1."""
    if isinstance(spec, ConfusionMatrix):
        return classes * classes
    return classes if isinstance(spec, Averaged) and spec.average == "none" else 1


def check(spec: TermSpec, classes: int) -> str | None:
    """Why a spec cannot apply to C classes (a threshold or the binary average need C = 2), or None."""
    if classes == 2 or not isinstance(spec, Thresholded):
        return None
    if spec.threshold is not None:
        return f"{spec.report_key}.threshold is for C = 2 (binary); here C = {classes}"
    if isinstance(spec, Averaged) and spec.average == "binary":
        return f"{spec.report_key}.average 'binary' is for C = 2; here C = {classes} (macro, micro or weighted)"
    return None

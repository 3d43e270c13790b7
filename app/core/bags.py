"""Bag-level losses (aggregate responses, Javanmard et al. 2024; api.md, "Multi-label, extreme,
cosine-margin and bag-level evaluation"): rows carry a bag id, and each bag a label distribution ȳ_b.

`instance_level_ce` is a per-row loss, (1/N) Σ_i −Σ_c ȳ_{b(i)c} log p_ic. `bag_level_ce` is not: its state
is per bag — Σ_{i∈b} w_i p_i [B, C], Σ_{i∈b} w_i ȳ_b [B, C] and Σ_{i∈b} w_i [B] — and these sums merge by
addition, so a bag whose rows span chunks (or workers) gets the same p̄_b as in one pass; the finalize
takes (1/B) Σ_b −Σ_c ȳ_bc log p̄_bc from the merged sums.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import spox.opset.ai.onnx.v21 as op
from spox import Var

from app.core.errors import InputError
from app.core.graph_context import GraphContext
from app.core.specs import TermSpec

State = dict[str, np.ndarray]


class BagLevelCe(TermSpec):
    """(1/B) Σ_b −Σ_c ȳ_bc log p̄_bc, p̄_b the (sample-weighted) mean predicted distribution of bag b's rows."""

    name: Literal["bag_level_ce"]


class InstanceLevelCe(TermSpec):
    """(1/N) Σ_i −Σ_c ȳ_{b(i)c} log p_ic: each row against its bag's label distribution."""

    name: Literal["instance_level_ce"]


def instance_level_ce(ctx: GraphContext, spec: InstanceLevelCe) -> Var:
    """−Σ_c ȳ_{b(i)c} log p_ic per row, [N]."""
    bag_targets = op.gather(ctx.inputs["bag_targets"], ctx.inputs["bags"], axis=0)
    return op.neg(ctx.row_sum(op.mul(bag_targets, ctx.log_probs)))


def bag_state(ctx: GraphContext, spec: BagLevelCe) -> dict[str, Var]:
    """Per bag: Σ w·p and Σ w·ȳ (flattened [B·C], one scatter each at b·C + c) and Σ w ([B])."""
    bags, bag_targets = ctx.inputs["bags"], ctx.inputs["bag_targets"]
    shape = op.shape(bag_targets)
    cells = op.reshape(op.reduce_prod(shape, keepdims=0), ctx.ints(1))
    index = op.reshape(op.add(op.mul(op.unsqueeze(bags, ctx.ints(1)), ctx.num_classes), ctx.class_index), ctx.ints(-1))
    w = op.unsqueeze(ctx.f64(ctx.weights), ctx.ints(1))

    def flat(x: Var) -> Var:
        return op.reshape(op.mul(w, ctx.f64(x)), ctx.ints(-1))

    return {
        "probabilities": ctx.scatter_total(index, flat(ctx.probs), cells),
        "targets": ctx.scatter_total(index, flat(op.gather(bag_targets, bags, axis=0)), cells),
        "count": ctx.scatter_total(bags, ctx.f64(ctx.weights), op.slice(shape, ctx.ints(0), ctx.ints(1))),
    }


def bag_level_ce(state: State, spec: BagLevelCe) -> float:
    """The mean over bags of the cross-entropy of ȳ_b against p̄_b (0·log 0 = 0); NaN when a bag has no
    weight (a group of a slice that holds no row of some bag)."""
    count = state["count"]
    classes = state["probabilities"].size // count.size
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_p = state["probabilities"].reshape(-1, classes) / count[:, None]
        target = state["targets"].reshape(-1, classes) / count[:, None]
        terms = np.where(target > 0, -target * np.log(mean_p), 0.0)
    return float(np.mean(terms.sum(1))) if (count > 0).all() else float("nan")


def checked_bags(
    bags: np.ndarray, bag_targets: np.ndarray, rows: int, classes: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Bag ids [N] (integers in [0, B)) and bag targets [B, C] (finite, each row a distribution)."""
    if bags.dtype.kind not in "iu":
        raise InputError("bags", f"must be integers, got dtype {bags.dtype}")
    if bags.shape != (rows,):
        raise InputError("bags", f"shape {list(bags.shape)} does not match the rows: expected [{rows}]")
    if bag_targets.dtype.kind not in "fiu" or bag_targets.ndim != 2 or bag_targets.shape[1] != classes:
        raise InputError(
            "bag_targets", f"must be [B, {classes}] numbers, got {bag_targets.dtype} {list(bag_targets.shape)}"
        )
    targets = np.ascontiguousarray(bag_targets, dtype=dtype)
    if not np.isfinite(targets).all() or (targets < 0).any():
        raise InputError("bag_targets", "values must be finite and ≥ 0")
    sums = targets.sum(axis=1, dtype=np.float64)
    tolerance = (1e-4 if dtype == np.float32 else 1e-8) * max(1, classes**0.5)
    if len(sums) == 0 or (np.abs(sums - 1) > tolerance).any():
        worst = int(np.argmax(np.abs(sums - 1))) if len(sums) else 0
        raise InputError("bag_targets", f"each row must be a label distribution summing to 1 (row {worst} is not)")
    if bags.size and (bags.min() < 0 or bags.max() >= len(targets)):
        bad = int(bags[(bags < 0) | (bags >= len(targets))][0])
        raise InputError("bags", f"bag id {bad} is outside [0, {len(targets)}) for B = {len(targets)} bag targets")
    return np.ascontiguousarray(bags, dtype=np.int64), targets


def empty_bag(bags: np.ndarray, count: int) -> int | None:
    """The first bag id without rows, if any."""
    empty = np.flatnonzero(np.bincount(bags, minlength=count) == 0)
    return int(empty[0]) if empty.size else None

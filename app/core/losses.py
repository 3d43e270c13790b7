"""Per-row loss fragments of the fused evaluation graph.

Each loss is a pydantic parameter model plus one builder returning the per-row value ℓ_i and, for
losses whose mean is not over rows (torch's class-weighted CE), the per-row denominator weight.
Section numbers refer to `shared/specs/losses_calibration.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import numpy as np
import spox.opset.ai.onnx.v21 as op
from pydantic import Field, model_validator
from spox import Var

from app.core.bags import BagLevelCe, InstanceLevelCe, bag_level_ce, bag_state, instance_level_ce
from app.core.graph_context import GraphContext, Task
from app.core.specs import TermSpec

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
ClassWeights = tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...]


@dataclass(frozen=True)
class LossTerm:
    """ℓ_i per row, and the per-row weight of the mean's denominator (None: 1 per row)."""

    value: Var
    denominator: Var | None = None


# ---- parameter models --------------------------------------------------------------------------------


class CrossEntropy(TermSpec):
    """PyTorch `CrossEntropyLoss` semantics (§2.1): smoothing includes the true class; the class-weighted
    mean with labels divides by Σ w_{y_i}; with soft targets it divides by N."""

    name: Literal["cross_entropy"]
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    weight: ClassWeights | None = Field(None, description="Per-class weights, length C.")


class Nll(TermSpec):
    """Negative log-likelihood −log p_y (§4.1); with probabilities input, p is floored at the dtype's tiny."""

    name: Literal["nll"]


class Brier(TermSpec):
    """Multiclass Brier score Σ_c (p_c − t_c)², range [0, 2] (§4.1)."""

    name: Literal["brier"]


class Focal(TermSpec):
    """Focal loss −α_y (1 − p_y)^γ log p_y (Lin et al. 2017, §2.2); the mean is over N."""

    name: Literal["focal"]
    gamma: NonNegFloat = 2.0
    alpha: ClassWeights | None = Field(None, description="Per-class weights α, length C.")


class ZLoss(TermSpec):
    """Z-loss softplus(a(b − z_y))/a on the standardised logits (de Brébisson & Vincent 2016, §2.3).
    No universal default exists for a, b: both are required. A row with σ = 0 has z_y = 0."""

    name: Literal["z_loss"]
    a: PositiveFloat
    b: float = Field(allow_inf_nan=False)


class LdrKl(TermSpec):
    """LDR-KL λ(lse(d/λ) − log C), d_k = c·1[k≠y] + f_k − f_y (Zhu et al. ICML 2023, §2.4).
    `transform: reference` first maps logits to softplus(z)/mean softplus(z) as the authors' code does."""

    name: Literal["ldr_kl"]
    lam: PositiveFloat = 10.0
    margin: NonNegFloat = 0.1
    transform: Literal["none", "reference"] = "none"


class AldrKl(TermSpec):
    """ALDR-KL with per-row λ_i from one update step starting at λ0 (the reference code's first call, §2.4).
    `transform: reference` divides logits by ‖z‖₁/C as `ALDRLoss_V1` does."""

    name: Literal["aldr_kl"]
    lam0: PositiveFloat = 10.0
    alpha: float = Field(2.0, gt=1, allow_inf_nan=False)
    margin: NonNegFloat = 0.1
    transform: Literal["none", "reference"] = "none"


class CompSum(TermSpec):
    """Comp-sum ℓ^τ = (p_y^{τ−1} − 1)/(1 − τ), log(1/p_y) at τ = 1 (Mao, Mohri, Zhong ICML 2023, §2.5)."""

    name: Literal["comp_sum"]
    tau: NonNegFloat


class Gce(TermSpec):
    """Generalized CE (1 − p_y^q)/q (Zhang & Sabuncu 2018, §2.6); with `k`, truncated at L_q(k)."""

    name: Literal["gce"]
    q: float = Field(0.7, gt=0, le=1)
    k: float | None = Field(None, gt=0, lt=1)


class Mae(TermSpec):
    """MAE 1 − p_y (comp-sum τ = 2, §2.5; half of Σ_c |p_c − onehot_c|)."""

    name: Literal["mae"]


class SumExp(TermSpec):
    """Sum-exponential Σ_{k≠y} e^{z_k − z_y} = 1/p_y − 1 (comp-sum τ = 0, §2.5)."""

    name: Literal["sum_exp"]


class Dice(TermSpec):
    """Self-adjusting Dice (Li et al. ACL 2020, §2.7), the reference code's squared denominator:
    Σ_c 1 − (2 p̃_c y_c + γ)/(p̃_c² + y_c² + γ), p̃ = (1 − p)^α p."""

    name: Literal["dice"]
    alpha: NonNegFloat = 0.01
    gamma: PositiveFloat = Field(1.0, description="Smoothing constant γ of the DSC.")


class StablemaxCe(TermSpec):
    """Cross-entropy of StableMax s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0) (Prieto et al. 2025, §2.9)."""

    name: Literal["stablemax_ce"]


class TaylorSoftmaxCe(TermSpec):
    """Cross-entropy of the Taylor softmax p_c ∝ Σ_{n≤order} z_c^n/n! (§2.3); `order` even keeps p > 0."""

    name: Literal["taylor_softmax_ce"]
    order: int = Field(2, ge=2, le=16)

    @model_validator(mode="after")
    def _even(self) -> TaylorSoftmaxCe:
        if self.order % 2:
            raise ValueError("order must be even (odd orders can make the Taylor softmax negative)")
        return self


class HingeCrammerSinger(TermSpec):
    """max_{k≠y} max(0, Δ + z_k − z_y) (Crammer & Singer 2001, §2.11)."""

    name: Literal["hinge_crammer_singer"]
    margin: NonNegFloat = 1.0


class HingeWestonWatkins(TermSpec):
    """Σ_{k≠y} max(0, Δ + z_k − z_y) (Weston & Watkins 1999, §2.11); no division by C."""

    name: Literal["hinge_weston_watkins"]
    margin: NonNegFloat = 1.0


class SquaredHinge(TermSpec):
    """One-vs-rest L2-SVM Σ_k max(0, Δ − t_k z_k)², t = ±1 (Tang 2013, §2.11); summed over classes."""

    name: Literal["squared_hinge"]
    margin: NonNegFloat = 1.0


class Kd(TermSpec):
    """Hinton KD: T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) per row, mean over N (torch 'batchmean', §2.8)."""

    name: Literal["kd"]
    temperature: PositiveFloat = 4.0


class Nkd(TermSpec):
    """NKD (Yang et al. ICCV 2023, §2.8): −T_y log S_y − γ τ² Σ_{k≠y} T̂_k log Ŝ_k, hats = softmax at τ over
    the non-target logits."""

    name: Literal["nkd"]
    temperature: PositiveFloat = 1.0
    gamma: NonNegFloat = 1.5


class NormFace(TermSpec):
    """Cross-entropy over s·cos θ_j (Wang et al. 2017); takes `cosines` (api.md, cosine-margin losses)."""

    name: Literal["normface"]
    s: PositiveFloat = 30.0


class CosFace(TermSpec):
    """Cross-entropy over s·cos θ_j with the true class's term s·(cos θ_y − m) (Wang et al. 2018)."""

    name: Literal["cosface"]
    s: PositiveFloat = 30.0
    m: NonNegFloat = 0.35


class ArcFace(TermSpec):
    """Cross-entropy over s·cos θ_j with the true class's term s·cos(θ_y + m) when θ_y ≤ π − m, else
    s·(cos θ_y − m·sin m) (Deng et al. 2019, as pytorch-metric-learning 2.9's ArcFaceLoss; m in radians)."""

    name: Literal["arcface"]
    s: PositiveFloat = 64.0
    m: NonNegFloat = 0.5


COSINE_LOSSES = ("normface", "cosface", "arcface")  # they read the scores as cosines


class Bce(TermSpec):
    """Multilabel: one-vs-all sigmoid cross-entropy, mean over N·C (torch's
    `binary_cross_entropy_with_logits`): per row (1/C) Σ_c softplus(z_c) − y_c z_c."""

    name: Literal["bce"]


class SoftmaxMultilabel(TermSpec):
    """Multilabel: −(1/|P_i|) Σ_{p∈P_i} log softmax(z_i)_p = lse(z_i) − mean_{p∈P_i} z_ip."""

    name: Literal["softmax_multilabel"]


class DecoupledSoftmax(TermSpec):
    """Multilabel, DEXML (Gupta et al. 2024): −(1/|P_i|) Σ_{p∈P_i} [z_ip − log(exp z_ip + Σ_{n∉P_i} exp z_in)],
    each positive against the negatives alone."""

    name: Literal["decoupled_softmax"]


# ---- builders -----------------------------------------------------------------------------------------


def _label_weight(ctx: GraphContext, weights: tuple[float, ...]) -> Var:
    return op.gather(ctx.const(weights), ctx.labels)


def _cross_entropy(ctx: GraphContext, p: CrossEntropy) -> LossTerm:
    eps = p.label_smoothing
    if not ctx.has_labels:
        target = ctx.targets
        if eps:
            target = op.add(op.mul(ctx.const(1 - eps), target), op.div(ctx.const(eps), ctx.num_classes_f))
        if p.weight is not None:
            target = op.mul(target, ctx.const(p.weight))
        return LossTerm(op.neg(ctx.row_sum(op.mul(target, ctx.log_probs))))
    ce = op.neg(ctx.true_log_prob)
    w_y = _label_weight(ctx, p.weight) if p.weight is not None else None
    value = op.mul(w_y, ce) if w_y is not None else ce
    if eps:
        neg_lp = op.neg(ctx.log_probs)
        if p.weight is not None:
            neg_lp = op.mul(neg_lp, ctx.const(p.weight))
        smooth = op.div(op.mul(ctx.const(eps), ctx.row_sum(neg_lp)), ctx.num_classes_f)
        value = op.add(op.mul(ctx.const(1 - eps), value), smooth)
    return LossTerm(value, w_y)


def _nll(ctx: GraphContext, p: Nll) -> LossTerm:
    return LossTerm(ctx.cross_entropy)


def _brier(ctx: GraphContext, p: Brier) -> LossTerm:
    return LossTerm(ctx.brier)


def _focal(ctx: GraphContext, p: Focal) -> LossTerm:
    def modulated(log_p: Var) -> Var:
        one_minus_p = op.neg(ctx.expm1(log_p))
        return op.mul(op.pow(one_minus_p, ctx.const(p.gamma)), op.neg(log_p))

    if ctx.has_labels:
        value = modulated(ctx.true_log_prob)
        if p.alpha is not None:
            value = op.mul(_label_weight(ctx, p.alpha), value)
        return LossTerm(value)
    per_class = op.mul(ctx.targets, modulated(ctx.log_probs))
    if p.alpha is not None:
        per_class = op.mul(per_class, ctx.const(p.alpha))
    return LossTerm(ctx.row_sum(per_class))


def _z_loss(ctx: GraphContext, p: ZLoss) -> LossTerm:
    o = ctx.scores
    mu = op.reduce_mean(o, ctx.ints(-1), keepdims=1)
    centred = op.sub(o, mu)
    sigma = op.sqrt(op.reduce_mean(op.mul(centred, centred), ctx.ints(-1), keepdims=0))
    z_num = ctx.at_label(centred)
    zero = ctx.const(0.0)
    degenerate = op.equal(sigma, zero)
    z_y = op.where(degenerate, zero, op.div(z_num, op.where(degenerate, ctx.const(1.0), sigma)))
    a = ctx.const(p.a)
    return LossTerm(op.div(ctx.softplus(op.mul(a, op.sub(ctx.const(p.b), z_y))), a))


def _ldr_scores(ctx: GraphContext, transform: str, kind: Literal["ldr", "aldr"]) -> Var:
    z = ctx.scores
    if transform == "none":
        return z
    if kind == "ldr":  # LDRLoss_V1: softplus(z) / mean_k softplus(z)
        sp = ctx.softplus(z)
        return op.div(sp, op.reduce_mean(sp, ctx.ints(-1), keepdims=1))
    scale = op.reduce_mean(op.abs(z), ctx.ints(-1), keepdims=1)  # ALDRLoss_V1: z / (‖z‖₁/C)
    safe = op.where(op.equal(scale, ctx.const(0.0)), ctx.const(1.0), scale)
    return op.div(z, safe)


def _ldr_value(ctx: GraphContext, f: Var, lam: Var, margin: float) -> Var:
    """λ(lse(d/λ) − log C) with d_k = c·1[k≠y] + f_k − f_y; λ is a scalar or a per-row [N, 1]."""
    off_target = op.sub(ctx.const(1.0), ctx.onehot)
    d = op.add(op.mul(ctx.const(margin), off_target), op.sub(f, op.unsqueeze(ctx.at_label(f), ctx.ints(1))))
    lse = op.reduce_log_sum_exp(op.div(d, lam), ctx.ints(-1), keepdims=1)
    value = op.mul(lam, op.sub(lse, op.log(ctx.num_classes_f)))
    return op.squeeze(value, ctx.ints(1))


def _ldr_kl(ctx: GraphContext, p: LdrKl) -> LossTerm:
    f = _ldr_scores(ctx, p.transform, "ldr")
    return LossTerm(_ldr_value(ctx, f, ctx.const(p.lam), p.margin))


def _aldr_kl(ctx: GraphContext, p: AldrKl) -> LossTerm:
    f = _ldr_scores(ctx, p.transform, "aldr")
    lam0 = ctx.const(p.lam0)
    q = op.add(op.softmax(op.div(f, lam0), axis=-1), ctx.const(1e-5))
    q = op.div(q, op.reduce_sum(q, ctx.ints(-1), keepdims=1))
    log_c = op.log(ctx.num_classes_f)
    kl = op.reduce_sum(op.mul(q, op.add(op.log(q), log_c)), ctx.ints(-1), keepdims=1)
    lam = op.mul(lam0, op.sub(ctx.const(1.0), op.div(kl, op.mul(ctx.const(p.alpha), log_c))))
    dev = op.squeeze(op.sub(lam, lam0), ctx.ints(1))
    penalty = op.div(op.mul(op.mul(ctx.const(p.alpha), log_c), op.mul(dev, dev)), ctx.const(2 * p.lam0))
    return LossTerm(op.sub(_ldr_value(ctx, f, lam, p.margin), penalty))


def _comp_sum_of(ctx: GraphContext, tau: float) -> Var:
    """ℓ^τ = expm1((1 − τ)·ce)/(1 − τ), the stable form of §2.5. For τ < 1 it grows like e^{(1−τ)ce}, so
    it is evaluated in float64 whatever the input dtype (float32 would overflow at ce ≈ 88/(1 − τ))."""
    ce = op.neg(ctx.true_log_prob)
    if tau == 1:
        return ce
    if tau < 1:
        ce = ctx.f64(ce)
    scale = ctx.like(ce, 1 - tau)
    return op.div(ctx.expm1(op.mul(scale, ce)), scale)


def _comp_sum(ctx: GraphContext, p: CompSum) -> LossTerm:
    return LossTerm(_comp_sum_of(ctx, p.tau))


def _gce(ctx: GraphContext, p: Gce) -> LossTerm:
    value = op.div(op.neg(ctx.expm1(op.mul(ctx.const(p.q), ctx.true_log_prob))), ctx.const(p.q))
    if p.k is not None:
        value = op.clip(value, None, ctx.const((1 - p.k**p.q) / p.q))
    return LossTerm(value)


def _mae(ctx: GraphContext, p: Mae) -> LossTerm:
    return LossTerm(op.neg(ctx.expm1(ctx.true_log_prob)))


def _sum_exp(ctx: GraphContext, p: SumExp) -> LossTerm:
    return LossTerm(_comp_sum_of(ctx, 0.0))


def _dice(ctx: GraphContext, p: Dice) -> LossTerm:
    probs = ctx.probs
    y = ctx.onehot
    adjusted = op.mul(op.pow(ctx.one_minus_probs, ctx.const(p.alpha)), probs) if p.alpha else probs
    smooth = ctx.const(p.gamma)
    num = op.add(op.mul(ctx.const(2.0), op.mul(adjusted, y)), smooth)
    den = op.add(op.add(op.mul(adjusted, adjusted), op.mul(y, y)), smooth)
    return LossTerm(ctx.row_sum(op.sub(ctx.const(1.0), op.div(num, den))))


def _stablemax_ce(ctx: GraphContext, p: StablemaxCe) -> LossTerm:
    z = ctx.scores
    one = ctx.const(1.0)
    positive = op.greater_or_equal(z, ctx.const(0.0))
    log_s = op.where(
        positive, op.log(op.add(one, op.relu(z))), op.neg(op.log(op.sub(one, op.clip(z, None, ctx.const(0.0)))))
    )
    lse = op.reduce_log_sum_exp(log_s, ctx.ints(-1), keepdims=0)
    return LossTerm(op.sub(lse, ctx.at_label(log_s)))


def _taylor_softmax_ce(ctx: GraphContext, p: TaylorSoftmaxCe) -> LossTerm:
    z = ctx.scores
    poly = ctx.const(1.0 / math.factorial(p.order))
    for n in range(p.order - 1, -1, -1):  # Horner: Σ_{n ≤ order} z^n / n!
        poly = op.add(op.mul(poly, z), ctx.const(1.0 / math.factorial(n)))
    log_t = op.log(poly)
    lse = op.log(ctx.row_sum(poly))
    return LossTerm(op.sub(lse, ctx.at_label(log_t)))


def _margins(ctx: GraphContext, margin: float) -> Var:
    """m_k = Δ·1[k≠y] + z_k − z_y, so m_y = 0."""
    z = ctx.scores
    z_y = op.unsqueeze(ctx.at_label(z), ctx.ints(1))
    return op.add(op.mul(ctx.const(margin), op.sub(ctx.const(1.0), ctx.onehot)), op.sub(z, z_y))


def _hinge_crammer_singer(ctx: GraphContext, p: HingeCrammerSinger) -> LossTerm:
    return LossTerm(op.relu(op.reduce_max(_margins(ctx, p.margin), ctx.ints(-1), keepdims=0)))


def _hinge_weston_watkins(ctx: GraphContext, p: HingeWestonWatkins) -> LossTerm:
    return LossTerm(ctx.row_sum(op.relu(_margins(ctx, p.margin))))


def _squared_hinge(ctx: GraphContext, p: SquaredHinge) -> LossTerm:
    signs = op.sub(op.mul(ctx.const(2.0), ctx.onehot), ctx.const(1.0))
    h = op.relu(op.sub(ctx.const(p.margin), op.mul(signs, ctx.scores)))
    return LossTerm(ctx.row_sum(op.mul(h, h)))


def _kd(ctx: GraphContext, p: Kd) -> LossTerm:
    t = ctx.const(p.temperature)
    log_student = op.log_softmax(op.div(ctx.scores, t), axis=-1)
    log_teacher = op.log_softmax(op.div(ctx.teacher_logits, t), axis=-1)
    kl = ctx.row_sum(op.mul(op.exp(log_teacher), op.sub(log_teacher, log_student)))
    return LossTerm(op.mul(ctx.const(p.temperature**2), kl))


def _margin_ce(ctx: GraphContext, s: float, target: Var) -> LossTerm:
    """Cross-entropy over s·cos θ with the true class's logit replaced by `target` [N]."""
    cosines = ctx.scores
    scaled = op.mul(ctx.const(s), cosines)
    logits = op.add(scaled, op.mul(ctx.onehot, op.unsqueeze(op.sub(target, ctx.at_label(scaled)), ctx.ints(1))))
    return LossTerm(op.neg(ctx.at_label(op.log_softmax(logits, axis=-1))))


def _normface(ctx: GraphContext, p: NormFace) -> LossTerm:
    return _margin_ce(ctx, p.s, op.mul(ctx.const(p.s), ctx.at_label(ctx.scores)))


def _cosface(ctx: GraphContext, p: CosFace) -> LossTerm:
    return _margin_ce(ctx, p.s, op.mul(ctx.const(p.s), op.sub(ctx.at_label(ctx.scores), ctx.const(p.m))))


def _arcface(ctx: GraphContext, p: ArcFace) -> LossTerm:
    """cos(θ_y + m) = cos θ_y cos m − sin θ_y sin m with sin θ_y = √(1 − cos² θ_y) (θ_y ∈ [0, π]), and
    θ_y ≤ π − m as cos θ_y ≥ cos(π − m): no arccos (onnxruntime has no float64 Acos)."""
    cos_y = op.clip(ctx.at_label(ctx.scores), ctx.const(-1.0), ctx.const(1.0))
    sin_y = op.sqrt(op.sub(ctx.const(1.0), op.mul(cos_y, cos_y)))
    shifted = op.sub(op.mul(cos_y, ctx.const(math.cos(p.m))), op.mul(sin_y, ctx.const(math.sin(p.m))))
    inside = op.mul(ctx.const(p.s), shifted)
    beyond = op.mul(ctx.const(p.s), op.sub(cos_y, ctx.const(p.m * math.sin(p.m))))
    limit = math.cos(math.pi - p.m) if p.m <= math.pi else math.inf  # beyond π: θ_y ≤ π − m never holds
    return _margin_ce(ctx, p.s, op.where(op.greater_or_equal(cos_y, ctx.const(limit)), inside, beyond))


def _nkd(ctx: GraphContext, p: Nkd) -> LossTerm:
    teacher_target = ctx.at_label(op.softmax(ctx.teacher_logits, axis=-1))
    target_term = op.neg(op.mul(teacher_target, ctx.true_log_prob))
    # Non-target softmax at τ: mask the target logit to −inf-like before normalising.
    t = ctx.const(p.temperature)
    mask = op.mul(ctx.onehot, ctx.const(np.finfo(ctx.layout.np_dtype).max / 4))
    log_s = op.log_softmax(op.sub(op.div(ctx.scores, t), mask), axis=-1)
    teacher_hat = op.softmax(op.sub(op.div(ctx.teacher_logits, t), mask), axis=-1)
    off_target = op.sub(ctx.const(1.0), ctx.onehot)
    cross = ctx.row_sum(op.mul(op.mul(teacher_hat, log_s), off_target))
    non_target = op.mul(ctx.const(-p.gamma * p.temperature**2), cross)
    return LossTerm(op.add(target_term, non_target))


def _bce(ctx: GraphContext, p: Bce) -> LossTerm:
    z = ctx.given
    return LossTerm(op.div(ctx.row_sum(op.sub(ctx.softplus(z), op.mul(ctx.truth, z))), ctx.num_classes_f))


def _softmax_multilabel(ctx: GraphContext, p: SoftmaxMultilabel) -> LossTerm:
    positive_mean = op.div(ctx.row_sum(op.mul(ctx.truth, ctx.given)), ctx.positives)
    return LossTerm(op.sub(op.squeeze(ctx.logsumexp, ctx.ints(1)), positive_mean))


def _decoupled_softmax(ctx: GraphContext, p: DecoupledSoftmax) -> LossTerm:
    """log(e^{z_p} + Σ_n e^{z_n}) − z_p = softplus(lse_neg − z_p), lse_neg the log-sum-exp of the row's
    negatives shifted by their own max (finite however far the positives lie); a row without negatives
    has lse_neg = −∞ and loss 0."""
    z, truth = ctx.given, ctx.truth
    is_positive = op.cast(truth, to=np.bool_)
    lowest = ctx.const(np.finfo(ctx.layout.np_dtype).min)
    negatives = op.where(is_positive, lowest, z)
    top = op.reduce_max(negatives, ctx.ints(-1), keepdims=1)
    exps = op.where(is_positive, ctx.const(0.0), op.exp(op.sub(z, top)))
    has_negative = op.greater(op.reduce_sum(exps, ctx.ints(-1), keepdims=1), ctx.const(0.0))
    total = op.where(has_negative, op.reduce_sum(exps, ctx.ints(-1), keepdims=1), ctx.const(1.0))
    lse_negatives = op.add(top, op.log(total))
    per_positive = op.where(has_negative, ctx.softplus(op.sub(lse_negatives, z)), ctx.const(0.0))
    return LossTerm(op.div(ctx.row_sum(op.mul(truth, per_positive)), ctx.positives))


def _instance_level_ce(ctx: GraphContext, p: InstanceLevelCe) -> LossTerm:
    return LossTerm(instance_level_ce(ctx, p))


@dataclass(frozen=True)
class LossDef:
    """A loss's facts: its parameters, its per-row term, what it needs beside the scores, and its
    direction for a gate (a loss is better lower: declared here as a metric's is on `MetricDef`). A loss
    that is not a mean over rows (`bag_level_ce`) declares summed `state` parts and a `finalize` instead
    of a per-row term."""

    spec: type[TermSpec]
    build: Callable[[GraphContext, TermSpec], LossTerm] | None
    needs_labels: bool = False
    needs_teacher: bool = False
    higher_is_better: bool = False
    task: Task = "multiclass"
    needs_bags: bool = False
    state: Callable[[GraphContext, TermSpec], dict[str, Var]] | None = None
    finalize: Callable[[dict[str, np.ndarray], TermSpec], float] | None = None


def _def(spec: type[TermSpec], build: Callable[..., LossTerm] | None, **flags: Any) -> tuple[str, LossDef]:
    name = spec.model_fields["name"].annotation.__args__[0]  # type: ignore[union-attr]
    return name, LossDef(spec, build, **flags)


LOSSES: dict[str, LossDef] = dict(
    [
        _def(CrossEntropy, _cross_entropy),
        _def(Nll, _nll),
        _def(Brier, _brier),
        _def(Focal, _focal),
        _def(ZLoss, _z_loss, needs_labels=True),
        _def(LdrKl, _ldr_kl, needs_labels=True),
        _def(AldrKl, _aldr_kl, needs_labels=True),
        _def(CompSum, _comp_sum, needs_labels=True),
        _def(Gce, _gce, needs_labels=True),
        _def(Mae, _mae, needs_labels=True),
        _def(SumExp, _sum_exp, needs_labels=True),
        _def(Dice, _dice),
        _def(StablemaxCe, _stablemax_ce, needs_labels=True),
        _def(TaylorSoftmaxCe, _taylor_softmax_ce, needs_labels=True),
        _def(HingeCrammerSinger, _hinge_crammer_singer, needs_labels=True),
        _def(HingeWestonWatkins, _hinge_weston_watkins, needs_labels=True),
        _def(SquaredHinge, _squared_hinge, needs_labels=True),
        _def(Kd, _kd, needs_teacher=True),
        _def(Nkd, _nkd, needs_labels=True, needs_teacher=True),
        _def(NormFace, _normface, needs_labels=True),
        _def(CosFace, _cosface, needs_labels=True),
        _def(ArcFace, _arcface, needs_labels=True),
        _def(Bce, _bce, task="multilabel"),
        _def(SoftmaxMultilabel, _softmax_multilabel, task="multilabel"),
        _def(DecoupledSoftmax, _decoupled_softmax, task="multilabel"),
        _def(InstanceLevelCe, _instance_level_ce, needs_bags=True),
        _def(BagLevelCe, None, needs_bags=True, state=bag_state, finalize=bag_level_ce),
    ]
)

if TYPE_CHECKING:
    LossSpec = TermSpec
else:  # a discriminated union over the registry's parameter models (documents every name in OpenAPI)
    LossSpec = Annotated[Union[tuple(d.spec for d in LOSSES.values())], Field(discriminator="name")]  # noqa: UP007
DEFAULT_LOSSES: tuple[str, ...] = ("cross_entropy",)
DEFAULT_MULTILABEL_LOSSES: tuple[str, ...] = ("bce",)
NEEDS_POSITIVES = frozenset({"softmax_multilabel", "decoupled_softmax"})  # a mean over the row's positives

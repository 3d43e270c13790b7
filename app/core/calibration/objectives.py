"""Fitting objectives as ONNX graphs: each returns sums over rows (merged over chunks in float64) of the
NLL and its derivatives, so that scipy's optimizers drive a loss computed by onnxruntime.

Parameters are graph *inputs*, so one cached session serves every optimizer iteration.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.calibration.apply import temperature_features
from app.core.graph_context import class_range, ints

AffineKind = Literal["vector", "matrix"]


def _f64_sum(x: Var, axes: tuple[int, ...] | None = None) -> Var:
    x64 = x if x.unwrap_tensor().dtype == np.float64 else op.cast(x, to=np.float64)
    return op.reduce_sum(x64, ints(*axes) if axes else None, keepdims=0)


def _rows(dtype: np.dtype) -> tuple[Var, Var]:
    return argument(Tensor(dtype, ("N", "C"))), argument(Tensor(np.int64, ("N",)))


def _label_col(labels: Var) -> Var:
    return op.unsqueeze(labels, ints(1))


def temperature_objective(dtype: np.dtype) -> onnx.ModelProto:
    """Σ NLL(β), Σ dNLL/dβ and Σ d²NLL/dβ² of softmax(β·z) (Guo et al. 2017; spec §3.1: convex in β):
    dNLL/dβ = E_p[z] − z_y and d²NLL/dβ² = Var_p(z)."""
    logits, labels = _rows(dtype)
    beta = argument(Tensor(dtype, ()))
    scaled = op.mul(logits, beta)
    log_p = op.log_softmax(scaled, axis=-1)
    p = op.exp(log_p)
    nll = op.neg(op.squeeze(op.gather_elements(log_p, _label_col(labels), axis=1), ints(1)))
    mean_z = op.reduce_sum(op.mul(p, logits), ints(-1), keepdims=1)
    z_y = op.gather_elements(logits, _label_col(labels), axis=1)
    centred = op.sub(logits, mean_z)
    variance = op.reduce_sum(op.mul(p, op.mul(centred, centred)), ints(-1), keepdims=0)
    outputs = {"nll": _f64_sum(nll), "grad": _f64_sum(op.sub(mean_z, z_y)), "hess": _f64_sum(variance)}
    return build({"logits": logits, "labels": labels, "beta": beta}, outputs)


def affine_objective(dtype: np.dtype, kind: AffineKind, on_log_probs: bool) -> onnx.ModelProto:
    """Σ NLL of softmax(w ⊙ x + b) (vector) or softmax(x Wᵀ + b) (matrix) and its gradients, with
    x = z (vector/matrix scaling) or log_softmax(z) (Dirichlet calibration, Kull et al. 2019).
    ∂NLL/∂s = p − onehot, so ∂/∂b = Σ(p − y), ∂/∂w = Σ(p − y) ⊙ x, ∂/∂W = (p − y)ᵀ x."""
    logits, labels = _rows(dtype)
    weight = argument(Tensor(dtype, ("C",) if kind == "vector" else ("C", "C")))
    bias = argument(Tensor(dtype, ("C",)))
    x = op.log_softmax(logits, axis=-1) if on_log_probs else logits
    linear = op.mul(x, weight) if kind == "vector" else op.matmul(x, op.transpose(weight, perm=[1, 0]))
    log_p = op.log_softmax(op.add(linear, bias), axis=-1)
    nll = op.neg(op.squeeze(op.gather_elements(log_p, _label_col(labels), axis=1), ints(1)))
    classes = class_range(logits)
    onehot = op.cast(op.equal(_label_col(labels), classes), to=dtype)
    residual = op.sub(op.exp(log_p), onehot)
    if kind == "vector":
        grad_w = _f64_sum(op.mul(residual, x), (0,))
    else:  # GEMM in the input dtype (onnxruntime's float64 GEMM is slow); chunks are summed in float64
        grad_w = op.matmul(op.transpose(residual, perm=[1, 0]), x)
        if dtype != np.float64:
            grad_w = op.cast(grad_w, to=np.float64)
    outputs = {"nll": _f64_sum(nll), "grad_weight": grad_w, "grad_bias": _f64_sum(residual, (0,))}
    return build({"logits": logits, "labels": labels, "weight": weight, "bias": bias}, outputs)


def features_graph(dtype: np.dtype, top: int) -> onnx.ModelProto:
    """`logits` [N, C] -> `features` [N, top + 1]: φ of a per-input temperature (apply.temperature_features)."""
    logits = argument(Tensor(dtype, ("N", "C")))
    return build({"logits": logits}, {"features": temperature_features(logits, top)})


def adaptive_temperature_objective(dtype: np.dtype) -> onnx.ModelProto:
    """Σ NLL of softmax(z·e^(−s)), s = φ̂·w + b, and its gradients, in float64: with z′ = z·e^(−s),
    ∂NLL/∂s = z′_y − Σ_j p′_j z′_j, so ∂/∂w = Σ (∂NLL/∂s) φ̂ and ∂/∂b = Σ ∂NLL/∂s."""
    logits, labels = _rows(dtype)
    features = argument(Tensor(np.float64, ("N", "F")))
    weight, bias = argument(Tensor(np.float64, ("F",))), argument(Tensor(np.float64, ()))
    s = op.add(op.matmul(features, op.unsqueeze(weight, ints(1))), bias)  # [N, 1]
    scaled = op.mul(op.cast(logits, to=np.float64), op.exp(op.neg(s)))
    log_p = op.log_softmax(scaled, axis=-1)
    at_label = op.gather_elements(scaled, _label_col(labels), axis=1)  # [N, 1]
    nll = op.neg(op.gather_elements(log_p, _label_col(labels), axis=1))
    d_s = op.sub(at_label, op.reduce_sum(op.mul(op.exp(log_p), scaled), ints(1), keepdims=1))  # [N, 1]
    outputs = {"nll": _f64_sum(nll), "grad_weight": _f64_sum(op.mul(d_s, features), (0,)), "grad_bias": _f64_sum(d_s)}
    inputs = {"logits": logits, "labels": labels, "features": features, "weight": weight, "bias": bias}
    return build(inputs, outputs)


def logistic_objective(dtype: np.dtype) -> onnx.ModelProto:
    """Binary logistic regression with soft targets t on features F: Σ [softplus(u) − t·u], u = F·a + c,
    and its gradient Σ (σ(u) − t)·[F, 1] (Platt 1999; beta calibration, Kull et al. 2017)."""
    features = argument(Tensor(dtype, ("N", "K")))
    targets = argument(Tensor(dtype, ("N",)))
    coef = argument(Tensor(dtype, ("K",)))
    intercept = argument(Tensor(dtype, ()))
    u = op.add(op.squeeze(op.matmul(features, op.unsqueeze(coef, ints(1))), ints(1)), intercept)
    zero = op.constant(value=np.asarray(0, dtype=dtype))
    one = op.constant(value=np.asarray(1, dtype=dtype))
    softplus = op.add(op.max([u, zero]), op.log(op.add(one, op.exp(op.neg(op.abs(u))))))
    loss = op.sub(softplus, op.mul(targets, u))
    residual = op.sub(op.sigmoid(u), targets)
    outputs = {
        "loss": _f64_sum(loss),
        "grad_coef": _f64_sum(op.mul(features, op.unsqueeze(residual, ints(1))), (0,)),
        "grad_intercept": _f64_sum(residual),
    }
    return build({"features": features, "targets": targets, "coef": coef, "intercept": intercept}, outputs)


def correctness_aware_objective(dtype: np.dtype, per_row: bool = False) -> onnx.ModelProto:
    """Sums for the CA objective (Liu et al. 2024, spec §3.6) at temperature T (one scalar, or one per row
    as [N, 1]): Σ(conf − 1)² over rows the uncalibrated argmax gets right, Σ conf² over the wrong ones,
    and both counts. The class-balanced loss ((1 − acc)·S_right + acc·S_wrong) / ((1 − acc)·n_right +
    acc·n_wrong) is formed from these."""
    logits, labels = _rows(dtype)
    temperature = argument(Tensor(dtype, ("N", 1) if per_row else ()))
    conf = op.reduce_max(op.softmax(op.div(logits, temperature), axis=-1), ints(-1), keepdims=0)
    right = op.cast(op.equal(op.arg_max(logits, axis=-1, keepdims=0), labels), to=dtype)
    one = op.constant(value=np.asarray(1, dtype=dtype))
    miss = op.sub(conf, one)
    outputs = {
        "sq_right": _f64_sum(op.mul(right, op.mul(miss, miss))),
        "sq_wrong": _f64_sum(op.mul(op.sub(one, right), op.mul(conf, conf))),
        "n_right": _f64_sum(right),
        "n_wrong": _f64_sum(op.sub(one, right)),
    }
    return build({"logits": logits, "labels": labels, "temperature": temperature}, outputs)


def view_agreement(dtype: np.dtype) -> onnx.ModelProto:
    """a_i = share of the transformed views v ≥ 1 whose argmax equals the original view's (view 0), [N]."""
    views = argument(Tensor(dtype, ("N", "V", "C")))
    top = op.arg_max(views, axis=-1, keepdims=0)  # [N, V]
    original = op.slice(top, ints(0), ints(1), ints(1))
    others = op.slice(top, ints(1), ints(np.iinfo(np.int64).max), ints(1))
    agree = op.reduce_mean(op.cast(op.equal(others, original), to=dtype), ints(1), keepdims=0)
    return build({"logits": views}, {"agreement": agree})

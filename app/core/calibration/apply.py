"""Apply fragments: logits Var [N, C] -> calibrated probabilities Var [N, C] (spox `Var → Var`), one
parametrized fragment per family, in the logits' dtype. `standalone` builds the model the service runs
and `GET /v1/calibrators/{id}/onnx` exports; a composed export feeds the same fragment a model's
logits output instead of a graph input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.graph_context import class_range, ints, scalar

Scope = Literal["binary", "top_label"]
F64 = np.dtype(np.float64)


def _const(value: object, dtype: np.dtype) -> Var:
    return op.constant(value=np.asarray(value, dtype=dtype))


Fragment = Callable[[Var], Var]


def dtype_of(x: Var) -> np.dtype:
    return np.dtype(x.unwrap_tensor().dtype)


def standalone(fragment: Fragment, dtype: np.dtype, views: bool = False) -> onnx.ModelProto:
    """The fragment as a model: input `logits` [N, C] ([N, V, C] for views) -> output `probabilities`."""
    logits = argument(Tensor(dtype, ("N", "V", "C") if views else ("N", "C")))
    return build({"logits": logits}, {"probabilities": fragment(logits)})


def top_label_graph(dtype: np.dtype, from_logits: bool) -> onnx.ModelProto:
    """`scores` [N, C] -> `prediction` (argmax, ties → lowest index) and `confidence` (the max) of the
    probabilities: the softmax of logits (also returned as `probabilities`), or the scores themselves."""
    scores = argument(Tensor(dtype, ("N", "C")))
    p = op.softmax(scores, axis=-1) if from_logits else scores
    outputs = {"prediction": op.arg_max(p, axis=-1, keepdims=0), "confidence": op.reduce_max(p, ints(-1), keepdims=0)}
    return build({"scores": scores}, outputs | ({"probabilities": p} if from_logits else {}))


def temperature(z: Var, temperature: float) -> Var:
    """softmax(z / T) (Guo et al. 2017)."""
    return op.softmax(op.div(z, _const(temperature, dtype_of(z))), axis=-1)


def view_temperature(views: Var, temperature: float, slope: float, bounds: tuple[float, float]) -> Var:
    """softmax(z₀ / T_i) with T_i = clip(T·exp(slope·(1 − a_i)), bounds), a_i the share of views v ≥ 1
    whose argmax agrees with view 0's; `views` [N, V, C] (view 0 the original) -> [N, C]."""
    dtype = dtype_of(views)
    top = op.arg_max(views, axis=-1, keepdims=0)
    original = op.slice(top, ints(0), ints(1), ints(1))
    others = op.slice(top, ints(1), ints(np.iinfo(np.int64).max), ints(1))
    agreement = op.reduce_mean(op.cast(op.equal(others, original), to=dtype), ints(1), keepdims=1)  # [N, 1]
    disagreement = op.sub(_const(1.0, dtype), agreement)
    log_t = op.add(_const(np.log(temperature), dtype), op.mul(_const(slope, dtype), disagreement))
    log_t = op.clip(log_t, _const(np.log(bounds[0]), dtype), _const(np.log(bounds[1]), dtype))
    z0 = op.squeeze(op.slice(views, ints(0), ints(1), ints(1)), ints(1))
    return op.softmax(op.div(z0, op.exp(log_t)), axis=-1)


def affine(z: Var, weight: np.ndarray, bias: np.ndarray, on_log_probs: bool) -> Var:
    """softmax(w ⊙ x + b) for a weight vector, softmax(x Wᵀ + b) for a matrix; x = z or log_softmax(z)
    (vector/matrix scaling, Guo et al. 2017; Dirichlet calibration, Kull et al. 2019)."""
    dtype = dtype_of(z)
    x = op.log_softmax(z, axis=-1) if on_log_probs else z
    w = _const(weight, dtype)
    linear = op.mul(x, w) if weight.ndim == 1 else op.matmul(x, _const(weight.T, dtype))
    return op.softmax(op.add(linear, _const(bias, dtype)), axis=-1)


def temperature_features(z: Var, top: int) -> Var:
    """φ(z) of a per-input temperature (api.md, adaptive_temperature), in float64: the `top` largest
    log-probabilities, sorted, and the entropy of softmax(z); [N, top + 1]."""
    log_p = op.log_softmax(op.cast(z, to=np.float64), axis=-1)
    largest, _ = op.top_k(log_p, ints(top), axis=-1, largest=1, sorted=1)
    entropy = op.neg(op.reduce_sum(op.mul(op.exp(log_p), log_p), ints(-1), keepdims=1))
    return op.concat([largest, entropy], axis=-1)


def adaptive_temperature(
    z: Var, weights: np.ndarray, bias: float, feature_mean: np.ndarray, feature_scale: np.ndarray
) -> Var:
    """softmax(z / T(z)) with T(z) = exp(w·φ̂(z) + b), φ̂ the features standardised by the fit data's mean
    and scale (a TempNet-style per-input temperature)."""
    dtype = dtype_of(z)
    standard = op.div(op.sub(temperature_features(z, len(weights) - 1), _const(feature_mean, F64)),
                      _const(feature_scale, F64))  # fmt: skip
    log_t = op.add(op.matmul(standard, _const(weights.reshape(-1, 1), F64)), _const(bias, F64))
    return op.softmax(op.mul(z, op.cast(op.exp(op.neg(log_t)), to=dtype)), axis=-1)


def _renormalised(values: Var, dtype: np.dtype) -> Var:
    """Rows divided by their sum; a row that maps to all zeros becomes uniform."""
    total = op.reduce_sum(values, ints(-1), keepdims=1)
    empty = op.equal(total, _const(0.0, dtype))
    uniform = op.div(
        op.add(op.mul(values, _const(0.0, dtype)), _const(1.0, dtype)),
        op.cast(op.shape(values, start=1, end=2), to=dtype),
    )
    return op.where(empty, uniform, op.div(values, op.where(empty, _const(1.0, dtype), total)))


def _class_offsets(values: Var, width: int) -> Var:
    """[1, C] int64 row c·width, to index a flattened per-class table."""
    return op.mul(class_range(values), scalar(width, np.int64))


def bin_index(p: Var, inner_edges: np.ndarray, dtype: np.dtype) -> Var:
    """Number of inner edges ≤ p: bins [e_k, e_{k+1}), the last one closed (edges given explicitly)."""
    edges = _const(inner_edges, dtype)
    above = op.greater_or_equal(op.unsqueeze(p, ints(-1)), edges)
    return op.reduce_sum(op.cast(above, to=np.int64), ints(-1), keepdims=0)


def histogram(z: Var, bin_edges: np.ndarray, bin_values: np.ndarray) -> Var:
    """One-vs-rest histogram binning (Zadrozny & Elkan 2001): each p_c replaced by its bin's value for
    class c, rows renormalised. `bin_values` is [C, B], `bin_edges` the B + 1 edges."""
    dtype = dtype_of(z)
    p = op.softmax(z, axis=-1)
    bins = bin_values.shape[1]
    index = op.add(bin_index(p, bin_edges[1:-1], dtype), _class_offsets(p, bins))
    mapped = op.gather(_const(bin_values.reshape(-1), dtype), index)
    return _renormalised(mapped, dtype)


def isotonic(z: Var, thresholds_x: np.ndarray, thresholds_y: np.ndarray) -> Var:
    """One-vs-rest isotonic regression applied as scikit-learn does: linear interpolation between the
    fitted thresholds, clipped outside them ([C, K] tables, rows padded by repeating their last point);
    rows renormalised (Zadrozny & Elkan 2002)."""
    dtype = dtype_of(z)
    p = op.softmax(z, axis=-1)
    width = thresholds_x.shape[1]
    # segment k: x_{k-1} ≤ p < x_k, found by counting thresholds ≤ p per class ([N, C, K] comparison)
    xs = _const(thresholds_x, dtype)
    count = op.reduce_sum(
        op.cast(op.greater_or_equal(op.unsqueeze(p, ints(-1)), xs), to=np.int64), ints(-1), keepdims=0
    )
    upper = op.clip(count, scalar(1, np.int64), scalar(width - 1, np.int64))
    offsets = _class_offsets(p, width)
    flat_x, flat_y = _const(thresholds_x.reshape(-1), dtype), _const(thresholds_y.reshape(-1), dtype)
    hi, lo = op.add(upper, offsets), op.add(op.sub(upper, scalar(1, np.int64)), offsets)
    x0, x1, y0, y1 = op.gather(flat_x, lo), op.gather(flat_x, hi), op.gather(flat_y, lo), op.gather(flat_y, hi)
    span = op.sub(x1, x0)
    flat = op.equal(span, _const(0.0, dtype))
    t = op.div(op.sub(p, x0), op.where(flat, _const(1.0, dtype), span))
    t = op.clip(t, _const(0.0, dtype), _const(1.0, dtype))
    value = op.where(flat, y0, op.add(y0, op.mul(t, op.sub(y1, y0))))
    return _renormalised(value, dtype)


def score_logs(z: Var, scope: Scope, dtype: np.dtype) -> tuple[Var, Var, Var]:
    """(log s, log(1 − s), top one-hot) for the score a binary calibrator maps: s = p_1 for two classes
    (`binary`), the top-label confidence otherwise (`top_label`); both logs stay finite as s → 0 or 1."""
    log_p = op.log_softmax(z, axis=-1)
    if scope == "binary":
        log_s = op.squeeze(op.slice(log_p, ints(1), ints(2), ints(1)), ints(1))
        log_not_s = op.squeeze(op.slice(log_p, ints(0), ints(1), ints(1)), ints(1))
        return log_s, log_not_s, op.constant(value=np.zeros((1, 1), dtype))
    top = op.unsqueeze(op.arg_max(z, axis=-1, keepdims=0), ints(1))
    classes = class_range(z)
    onehot = op.cast(op.equal(top, classes), to=dtype)
    masked = op.sub(log_p, op.mul(onehot, _const(np.finfo(dtype).max / 4, dtype)))
    log_s = op.reduce_max(log_p, ints(-1), keepdims=0)
    log_not_s = op.reduce_log_sum_exp(masked, ints(-1), keepdims=0)
    return log_s, log_not_s, onehot


def _with_score(z: Var, scope: Scope, onehot: Var, log_s: Var, new_s: Var, dtype: np.dtype) -> Var:
    """Probabilities with the score replaced: [1 − s′, s′] (binary), or p_top = s′ and the other classes
    rescaled by (1 − s′)/(1 − s) so that rows still sum to 1 (top-label)."""
    one = _const(1.0, dtype)
    if scope == "binary":
        return op.concat([op.unsqueeze(op.sub(one, new_s), ints(1)), op.unsqueeze(new_s, ints(1))], axis=1)
    p = op.softmax(z, axis=-1)
    scale = op.div(op.sub(one, new_s), op.sub(one, op.exp(log_s)))
    safe_scale = op.where(op.equal(op.sub(one, op.exp(log_s)), _const(0.0, dtype)), _const(0.0, dtype), scale)
    others = op.mul(op.mul(p, op.sub(one, onehot)), op.unsqueeze(safe_scale, ints(1)))
    return op.add(others, op.mul(onehot, op.unsqueeze(new_s, ints(1))))


def sigmoid_map(z: Var, coef: np.ndarray, intercept: float, scope: Scope) -> Var:
    """s′ = σ(a₁·log s + a₂·log(1 − s) + c): Platt scaling on f = logit(s) = log s − log(1 − s)
    (coef = (−A, A) with Platt's p = 1/(1 + exp(A f + B)), c = −B) and beta calibration
    logit(s′) = a·ln s − b·ln(1 − s) + c (coef = (a, −b)) share this form (Kull et al. 2017)."""
    dtype = dtype_of(z)
    log_s, log_not_s, onehot = score_logs(z, scope, dtype)
    u = op.add(
        op.add(op.mul(_const(coef[0], dtype), log_s), op.mul(_const(coef[1], dtype), log_not_s)),
        _const(intercept, dtype),
    )
    return _with_score(z, scope, onehot, log_s, op.sigmoid(u), dtype)


def score_features_graph(scope: Scope, dtype: np.dtype) -> onnx.ModelProto:
    """For fitting Platt/beta: [log s, log(1 − s)] per row and the binary target (y = 1 for `binary`,
    top-label correctness for `top_label`)."""
    z = argument(Tensor(dtype, ("N", "C")))
    labels = argument(Tensor(np.int64, ("N",)))
    log_s, log_not_s, _ = score_logs(z, scope, dtype)
    if scope == "binary":
        target = op.cast(op.equal(labels, scalar(1, np.int64)), to=dtype)
    else:
        target = op.cast(op.equal(op.arg_max(z, axis=-1, keepdims=0), labels), to=dtype)
    features = op.concat([op.unsqueeze(log_s, ints(1)), op.unsqueeze(log_not_s, ints(1))], axis=1)
    return build({"logits": z, "labels": labels}, {"features": features, "target": target})


def histogram_counts_graph(bin_edges: np.ndarray, dtype: np.dtype) -> onnx.ModelProto:
    """Per (class, bin) of p_c: the row count and the count of rows whose label is c (one scatter each)."""
    z = argument(Tensor(dtype, ("N", "C")))
    labels = argument(Tensor(np.int64, ("N",)))
    p = op.softmax(z, axis=-1)
    bins = len(bin_edges) - 1
    index = op.reshape(op.add(bin_index(p, bin_edges[1:-1], dtype), _class_offsets(p, bins)), ints(-1))
    size = op.mul(op.shape(z, start=1, end=2), op.constant(value=np.asarray([bins], np.int64)))
    zeros = op.constant_of_shape(size, value=np.array([0.0], np.float64))
    classes = op.squeeze(class_range(p), ints(0))
    positive = op.cast(op.equal(op.unsqueeze(labels, ints(1)), op.unsqueeze(classes, ints(0))), to=np.float64)
    ones = op.cast(op.add(op.mul(z, _const(0.0, dtype)), _const(1.0, dtype)), to=np.float64)
    outputs = {
        "count": op.scatter_elements(zeros, index, op.reshape(ones, ints(-1)), reduction="add"),
        "positive": op.scatter_elements(zeros, index, op.reshape(positive, ints(-1)), reduction="add"),
    }
    return build({"logits": z, "labels": labels}, outputs)

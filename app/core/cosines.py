"""Cosines of embeddings against class weights (api.md, cosine-margin losses): both L2-normalised, then
one matrix product per chunk in onnxruntime, clipped to [−1, 1]: the `cosines` a margin loss reads."""

from __future__ import annotations

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.errors import InputError
from app.core.graph_context import ints, scalar
from app.core.graphrun import mapped_outputs
from app.core.runtime import SessionCache
from app.core.validation import float_matrix


def _unit_rows(x: Var, dtype: np.dtype) -> Var:
    norms = op.sqrt(op.reduce_sum(op.mul(x, x), ints(1), keepdims=1))
    return op.div(x, op.max([norms, scalar(1e-12, dtype)]))


def cosines_graph(dtype: np.dtype) -> onnx.ModelProto:
    """`embeddings` [N, D] and `class_weights` [C, D] (fed whole to every chunk) -> `cosines` [N, C]."""
    x, weights = argument(Tensor(dtype, ("N", "D"))), argument(Tensor(dtype, ("C", "D")))
    cosines = op.matmul(_unit_rows(x, dtype), op.transpose(_unit_rows(weights, dtype), perm=[1, 0]))
    clipped = op.clip(cosines, scalar(-1.0, dtype), scalar(1.0, dtype))
    return build({"embeddings": x, "class_weights": weights}, {"cosines": clipped})


def cosines_of(
    embeddings: np.ndarray | None, class_weights: np.ndarray, cache: SessionCache | None = None
) -> np.ndarray:
    """cos θ [N, C] of embeddings [N, D] against class weights [C, D] (422 naming the field at fault)."""
    weights = float_matrix(class_weights, "class_weights")
    x = float_matrix(embeddings, "embeddings")
    if x.shape[1] != weights.shape[1]:
        raise InputError("class_weights", f"has D = {weights.shape[1]}; the embeddings have D = {x.shape[1]}")
    if weights.shape[0] < 2:
        raise InputError("class_weights", "needs at least 2 classes (rows)")
    dtype = np.dtype(x.dtype)
    out = mapped_outputs(f"cosines:{dtype}", lambda: cosines_graph(dtype), {"embeddings": x},
                         {"class_weights": weights.astype(dtype)}, cache)  # fmt: skip
    return out["cosines"]


def checked_cosines(cosines: np.ndarray) -> np.ndarray:
    """Given cosines: finite, [N, C], each in [−1, 1]."""
    matrix = float_matrix(cosines, "cosines")
    if (np.abs(matrix) > 1).any():
        raise InputError("cosines", "each cosine must lie in [−1, 1]")
    return matrix

"""Logit-based OOD scores as one fused ONNX graph (mahalanobis.md §6), all with the API's sign
convention: higher = more out-of-distribution (each is the negated ID confidence of its paper)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from pydantic import Field
from spox import Tensor, Var, argument, build

from app.core.graph_context import ints, scalar
from app.core.specs import TermSpec


class Msp(TermSpec):
    """−max_k softmax(l)_k (Hendrycks & Gimpel 2017)."""

    name: Literal["msp"]


class MaxLogit(TermSpec):
    """−max_k l_k (Hendrycks et al. 2022)."""

    name: Literal["max_logit"]


class Energy(TermSpec):
    """−T·logsumexp(l/T), the free energy (Liu et al. 2020)."""

    name: Literal["energy"]
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)


class EntropyScore(TermSpec):
    """H(p) = −Σ p_k log p_k (0·log 0 = 0)."""

    name: Literal["entropy"]


class Gen(TermSpec):
    """Σ_{j ∈ top-M(p)} p_j^γ (1 − p_j)^γ, generalized entropy (Liu, Lochman & Zach, CVPR 2023)."""

    name: Literal["gen"]
    gamma: float = Field(0.1, gt=0, allow_inf_nan=False)
    m: int | None = Field(None, ge=1, description="Top-M classes; default min(100, C).")


SCORES = {
    cls.model_fields["name"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in (Msp, MaxLogit, Energy, EntropyScore, Gen)
}
if TYPE_CHECKING:
    ScoreSpec = TermSpec
else:
    ScoreSpec = Annotated[Union[tuple(SCORES.values())], Field(discriminator="name")]  # noqa: UP007


def _score(spec: TermSpec, logits: Var, log_p: Var, p: Var, classes: int, dtype: np.dtype) -> Var:

    def c(value: float) -> Var:
        return scalar(value, dtype)

    if isinstance(spec, Msp):
        return op.neg(op.reduce_max(p, ints(-1), keepdims=0))
    if isinstance(spec, MaxLogit):
        return op.neg(op.reduce_max(logits, ints(-1), keepdims=0))
    if isinstance(spec, Energy):
        t = c(spec.temperature)
        return op.neg(op.mul(t, op.reduce_log_sum_exp(op.div(logits, t), ints(-1), keepdims=0)))
    if isinstance(spec, EntropyScore):
        return op.neg(op.reduce_sum(op.mul(p, log_p), ints(-1), keepdims=0))
    assert isinstance(spec, Gen)
    m = min(spec.m or 100, classes)
    top, _ = op.top_k(p, ints(m), axis=-1)
    term = op.mul(op.pow(top, c(spec.gamma)), op.pow(op.sub(c(1.0), top), c(spec.gamma)))
    return op.reduce_sum(term, ints(-1), keepdims=0)


def scores_fragment(specs: tuple[TermSpec, ...], logits: Var, classes: int) -> dict[str, Var]:
    """logits Var [N, C] -> one [N] score per requested spec (by report key), sharing one log-softmax."""
    dtype = np.dtype(logits.unwrap_tensor().dtype)
    log_p = op.log_softmax(logits, axis=-1)
    p = op.exp(log_p)
    return {spec.report_key: _score(spec, logits, log_p, p, classes, dtype) for spec in specs}


def scores_graph(specs: tuple[TermSpec, ...], classes: int, dtype: np.dtype) -> onnx.ModelProto:
    """The fragment as a model: input `logits` [N, C] -> one [N] output per score."""
    logits = argument(Tensor(dtype, ("N", classes)))
    return build({"logits": logits}, scores_fragment(specs, logits, classes))

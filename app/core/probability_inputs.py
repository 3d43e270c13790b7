"""How a graph's input becomes the probabilities it ranks (conformal sets, confidence estimates): the
softmax of logits, a calibrator's apply fragment, or given probabilities as they are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import spox.opset.ai.onnx.v21 as op
from spox import Var


@dataclass(frozen=True)
class Probabilities:
    """The input's `name` (logits or probabilities), the `fragment` that makes probabilities of it, and
    that fragment's session-cache `key`."""

    name: str
    fragment: Callable[[Var], Var]
    key: str


def softmax(logits: Var) -> Var:
    """softmax in float64 (api.md: conformal scores and q̂ are float64)."""
    return op.softmax(op.cast(logits, to=np.float64), axis=-1)


def as_given(probabilities: Var) -> Var:
    return probabilities

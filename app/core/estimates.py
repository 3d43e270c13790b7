"""Label-free accuracy estimates from confidences (api.md, "Guarantees"), for traffic without labels yet.

With p the (calibrated) probabilities of a row and c = max_j p_j its confidence:
`cbpe` = mean c (NannyML's confidence-based performance estimation: the expected accuracy of a calibrated
model); `atc` (Garg et al. 2022, ATC-MC) = the share of rows with c > t, t the e-th smallest confidence of
a labelled reference whose e rows are misclassified (−∞ when e = 0); `doc` (Guillory et al. 2021) = reference
accuracy − (mean reference c − mean c). Predictions and confidences come from one ONNX graph per input
kind (argmax ties → the lowest index); the means are sums over rows in float64."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, argument, build

from app.core.graph_context import ints
from app.core.graphrun import mapped_outputs
from app.core.probability_inputs import Probabilities
from app.core.runtime import SessionCache


def top_label_graph(given: Probabilities, dtype: np.dtype) -> onnx.ModelProto:
    """Input `given.name` [N, C] -> `prediction` [N] int64 (argmax, ties → lowest index) and `confidence`
    [N] float64 (the max) of its probabilities."""
    x = argument(Tensor(dtype, ("N", "C")))
    p = op.cast(given.fragment(x), to=np.float64)
    outputs = {"prediction": op.arg_max(p, axis=-1, keepdims=0), "confidence": op.reduce_max(p, ints(-1), keepdims=0)}
    return build({given.name: x}, outputs)


@dataclass(frozen=True)
class TopLabel:
    """Each row's predicted class and confidence."""

    prediction: np.ndarray
    confidence: np.ndarray

    @classmethod
    def of(cls, inputs: np.ndarray, given: Probabilities, cache: SessionCache | None = None) -> TopLabel:
        dtype = np.dtype(inputs.dtype)
        out = mapped_outputs(
            f"top-label:{given.key}:{dtype}", lambda: top_label_graph(given, dtype), {given.name: inputs}, cache=cache
        )
        return cls(out["prediction"], out["confidence"])

    @property
    def mean_confidence(self) -> float:
        return float(np.sum(self.confidence, dtype=np.float64) / len(self.confidence))


@dataclass(frozen=True)
class Reference:
    """What the labelled reference shows: its rows, accuracy, mean confidence and ATC threshold t."""

    n: int
    accuracy: float
    mean_confidence: float
    atc_threshold: float  # −∞ when every reference row is predicted correctly

    @classmethod
    def of(cls, top: TopLabel, labels: np.ndarray) -> Reference:
        wrong = top.prediction != labels
        errors = int(wrong.sum())
        threshold = -math.inf if errors == 0 else float(np.partition(top.confidence, errors - 1)[errors - 1])
        return cls(len(labels), float(1 - errors / len(labels)), top.mean_confidence, threshold)


def cbpe(top: TopLabel) -> float:
    return top.mean_confidence


def atc(top: TopLabel, reference: Reference) -> float:
    return float(np.mean(top.confidence > reference.atc_threshold))


def doc(top: TopLabel, reference: Reference) -> float:
    return reference.accuracy - (reference.mean_confidence - top.mean_confidence)

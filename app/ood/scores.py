"""OOD use cases: logit scores through the ONNX graph, separation metrics of two score sets."""

from __future__ import annotations

import numpy as np

from app.core.errors import InputError
from app.core.evaluation import validate_scores
from app.core.graphrun import mapped_outputs
from app.core.logit_scores import scores_graph
from app.core.ood_metrics import separation
from app.core.runtime import SessionCache
from app.ood.detectors import DetectorService
from app.ood.schemas import OodEvaluateOut, OodEvaluateRequest, ScoresOut, ScoresRequest


def logit_scores(request: ScoresRequest, arrays: dict[str, np.ndarray], cache: SessionCache) -> ScoresOut:
    if "logits" not in arrays:
        raise InputError("logits", "required")
    if not request.methods:
        raise InputError("methods", "give at least one method")
    keys = [m.report_key for m in request.methods]
    if len(set(keys)) != len(keys):
        raise InputError("methods", "two methods report under the same key: give each a distinct 'key'")
    logits = validate_scores(arrays["logits"])
    specs = tuple(request.methods)
    dtype, classes = logits.dtype, logits.shape[1]
    columns = mapped_outputs(
        f"ood:scores:{dtype}:{classes}:{[s.model_dump() for s in specs]}",
        lambda: scores_graph(specs, classes, dtype),
        {"logits": logits},
        cache=cache,
    )
    return ScoresOut(scores={k: v.astype(np.float64).tolist() for k, v in columns.items()})


def _scores(arrays: dict[str, np.ndarray], field: str) -> np.ndarray:
    values = arrays.get(field)
    if values is None:
        raise InputError(field, "required")
    if values.ndim != 1:
        raise InputError(field, f"must be a 1-D array of scores, got shape {list(values.shape)}")
    if values.size == 0:
        raise InputError(field, "is empty")
    if values.dtype.kind not in "fiu":
        raise InputError(field, f"dtype {values.dtype} is not numeric")
    scores = values.astype(np.float64)
    if not np.isfinite(scores).all():
        raise InputError(field, "contains NaN or infinite value(s)")
    return scores


class OodService:
    """OOD use cases that need the app's resources: logit scores, and the separation of two score sets
    given directly or as a stored detector's scores of features."""

    def __init__(self, detectors: DetectorService, runtime: SessionCache) -> None:
        self.detectors, self.runtime = detectors, runtime

    def logit_scores(self, request: ScoresRequest, arrays: dict[str, np.ndarray]) -> ScoresOut:
        return logit_scores(request, arrays, self.runtime)

    def evaluate(self, request: OodEvaluateRequest, arrays: dict[str, np.ndarray]) -> OodEvaluateOut:
        if request.detector_id is not None:
            for side in ("in", "out"):
                if f"scores_{side}" in arrays:
                    raise InputError(f"scores_{side}", "give scores or detector_id with features, not both")
            for side in ("in", "out"):
                arrays[f"scores_{side}"], _ = self.detectors.score(request.detector_id, arrays, f"features_{side}")
        return separation_of(request, arrays)


def separation_of(request: OodEvaluateRequest, arrays: dict[str, np.ndarray]) -> OodEvaluateOut:
    scores_in, scores_out = _scores(arrays, "scores_in"), _scores(arrays, "scores_out")
    return OodEvaluateOut(
        **separation(scores_in, scores_out, request.aupr),
        n_in=len(scores_in),
        n_out=len(scores_out),
        aupr_integral=request.aupr,
    )

"""Predict: an uploaded model with its heads. The model runs in the worker pool (`ModelRunner`), the heads
(calibrator, detector, SDM) in this process through their own services, after checking that they fit the
model (C, D) before anything runs. The composed export and V2 serving build on the same composition."""

from __future__ import annotations

import numpy as np

from app.core.calibration import apply
from app.core.errors import InputError
from app.core.evaluation import two_columns
from app.core.graphrun import mapped_outputs
from app.core.runtime import SessionCache
from app.models.runner import ModelRunner, read_logits
from app.pipelines.heads import HeadCheck, Heads
from app.sdm.service import npz_columns


class PredictService:
    def __init__(self, runner: ModelRunner, heads: HeadCheck, runtime: SessionCache) -> None:
        self.runner, self.heads, self.runtime = runner, heads, runtime

    def predict(
        self, model_id: str, arrays: dict[str, np.ndarray], heads: Heads, return_embedding: bool = False
    ) -> dict[str, np.ndarray]:
        """The columns of api.md's predict: logits, probabilities (calibrated, or the softmax), prediction,
        confidence, and embedding, ood_score, prediction_set and sdm.* when asked. A binary model's logits are its [N]
        log-odds and its probabilities P(class 1) [N]; its heads see the two-class problem [0, z]."""
        record = self.runner.get(model_id)
        wanted = self.heads.outputs(record, heads, return_embedding)
        out = self.runner.outputs(record, arrays, wanted)
        logits = read_logits(record, out[record.logits_output])
        scores = two_columns(logits) if record.binary else logits  # the heads take [N, C]
        if record.classes is not None and scores.shape[1] != record.classes:
            raise InputError("inputs", f"the model produced C = {scores.shape[1]}; it declares {record.classes}")
        if heads.calibrator_id is not None:
            probabilities = self.heads.calibrators.apply(heads.calibrator_id, scores)
            columns = {"probabilities": probabilities} | top_label(probabilities, False, self.runtime)
        else:
            columns = top_label(scores, True, self.runtime)
        columns["logits"] = logits
        if record.binary:  # P(class 1), as a calibrator applied to binary log-odds answers (api.md)
            columns["probabilities"] = np.ascontiguousarray(columns["probabilities"][:, 1])
        embedding = out.get(record.embedding_output or "")
        if return_embedding and embedding is not None:
            columns["embedding"] = embedding
        if heads.detector_id is not None:
            features = self.heads.detectors.model_features(heads.detector_id, out, record.embedding_output)
            columns["ood_score"], _ = self.heads.detectors.score(heads.detector_id, features)
        if heads.conformal_id is not None:
            columns["prediction_set"], _, _ = self.heads.conformal.predict(heads.conformal_id, {"logits": scores})
        if heads.sdm_id is not None:
            _, sdm = self.heads.sdm.score(heads.sdm_id, {"embeddings": embedding, "logits": scores})  # type: ignore[dict-item]
            columns |= {f"sdm.{k}": v for k, v in npz_columns(sdm).items()}
        return columns


def top_label(scores: np.ndarray, from_logits: bool, runtime: SessionCache) -> dict[str, np.ndarray]:
    """probabilities (the softmax, from logits), prediction and confidence, in one graph run in chunks."""
    dtype = scores.dtype
    build = lambda: apply.top_label_graph(dtype, from_logits)  # noqa: E731
    return mapped_outputs(f"top-label:{from_logits}:{dtype}", build, {"scores": scores}, cache=runtime)

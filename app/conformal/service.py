"""Conformal predictor use cases: fit and store, look up, list, delete, predict sets, export.
The estimator is `app.core.conformal.ConformalPredictor`; this module decides what it ranks (softmax
of logits, a stored calibrator's probabilities, or given probabilities) and keeps its sessions."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
from spox import Var

from app.calibration.service import CalibrationService, probabilities_key
from app.conformal.schemas import (
    ConformalFitReport,
    ConformalOut,
    ConformalParams,
    ConformalPredictOut,
    ConformalRequest,
)
from app.core.conformal import ConformalPredictor, Coverage, Method
from app.core.errors import InputError
from app.core.evaluation import validate_batch, validate_scores
from app.core.runtime import SessionCache
from app.models.runner import ModelRunner
from app.records import new_id, utc_now
from app.sources.files import DataFiles
from app.storage.models import ConformalRecord
from app.storage.repository import Repository
from app.stored import StoredResource

INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# What an evaluation with `conformal_id` adds, each with whether higher is better (the gate's direction).
EVALUATION_METRICS: dict[str, bool] = {"conformal_coverage": True, "conformal_mean_set_size": False}


def evaluation_metrics(coverage: Coverage) -> dict[str, float]:
    return {"conformal_coverage": coverage.coverage, "conformal_mean_set_size": coverage.mean_set_size}


def conformal_out(record: ConformalRecord) -> ConformalOut:
    """The answer: q̂ (null for +∞ or under mondrian), `infinite`, and q̂_c under mondrian."""
    params = ConformalParams.model_validate(record.params)
    mondrian = params.mondrian
    return ConformalOut(
        id=record.id,
        created_at=record.created_at,
        method=record.method,
        params=params,
        n_calibration=record.n_calibration,
        classes=record.classes,
        quantile=None if mondrian else record.quantiles[0],
        infinite=any(q is None for q in record.quantiles),
        class_quantiles=list(record.quantiles) if mondrian else None,
        calibrator_id=record.calibrator_id,
        fit_report=ConformalFitReport.model_validate(record.fit_report),
        model=record.model,
        dataset=record.dataset,
        tags=record.tags,
    )


def restored(record: ConformalRecord) -> ConformalPredictor:
    """The fitted predictor of a record (null quantiles are +∞)."""
    params = ConformalParams.model_validate(record.params)
    predictor = ConformalPredictor(cast(Method, record.method), params.alpha, params.mondrian, params.lam, params.k_reg)
    quantiles = np.array([math.inf if q is None else q for q in record.quantiles], np.float64)
    predictor.quantiles_ = quantiles if params.mondrian else quantiles.reshape(())
    predictor.classes_, predictor.n_calibration_ = record.classes, record.n_calibration
    return predictor


class ConformalService(StoredResource[ConformalRecord, ConformalOut]):
    def __init__(
        self,
        repository: Repository[ConformalRecord],
        runtime: SessionCache,
        models: ModelRunner,
        calibrators: CalibrationService,
        files: DataFiles | None = None,
    ) -> None:
        super().__init__(repository, conformal_out)
        self.runtime, self.models, self.calibrators = runtime, models, calibrators
        self.files = files or DataFiles()

    def create(self, request: ConformalRequest, arrays: dict[str, np.ndarray]) -> ConformalOut:
        """Fit on calibration rows (given, read from files, or a model's logits of `inputs`) and store."""
        arrays = self.files.read(request.source, arrays)
        arrays = self.models.resolve(request.model_id, arrays, {"logits": "logits"}, ("",))
        if request.calibrator_id is not None and "logits" not in arrays:
            raise InputError("calibrator_id", "a calibrator maps logits: give `logits` (or a model's inputs)")
        batch = validate_batch(
            logits=arrays.get("logits"), probabilities=arrays.get("probabilities"), labels=arrays.get("labels")
        )
        if batch.layout.binary or batch.labels is None:
            raise InputError(batch.layout.input_kind, "must be [N, C] with C ≥ 2 columns, and `labels` [N]")
        given = self.calibrators.probabilities_of(batch.layout.input_kind, request.calibrator_id, batch.classes)
        params = request.params
        predictor = ConformalPredictor(request.method, params.alpha, params.mondrian, params.lam, params.k_reg)
        predictor.fit(batch.scores, batch.labels, given, self.runtime)
        record_id = new_id()
        sets, sizes = predictor.predict(batch.scores, given, self._key(record_id), self.runtime)
        fit = Coverage.of(sets, sizes, batch.labels)
        quantiles = np.atleast_1d(predictor.quantiles_)
        record = self.repository.add(
            ConformalRecord(
                id=record_id,
                created_at=utc_now(),
                method=request.method,
                classes=batch.classes,
                n_calibration=predictor.n_calibration_,
                calibrator_id=request.calibrator_id,
                model=request.model,
                dataset=request.dataset,
                tags=request.tags,
                params=params.model_dump(mode="json", by_alias=True),
                quantiles=[None if math.isinf(q) else float(q) for q in quantiles],
                fit_report={"coverage": fit.coverage, "mean_set_size": fit.mean_set_size},
            )
        )
        return self.answer(record)

    def predict(
        self, conformal_id: str, arrays: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, Coverage | None]:
        """(prediction_set [N, C] bool, set_size [N], and with labels their coverage)."""
        record = self.record(conformal_id)
        kind = "logits" if "logits" in arrays else "probabilities"
        if ("logits" in arrays) == ("probabilities" in arrays):
            raise InputError("logits", "give exactly one of 'logits' and 'probabilities'")
        scores = validate_scores(arrays[kind], kind)  # type: ignore[arg-type]
        if scores.shape[1] != record.classes:
            raise InputError(kind, f"has C = {scores.shape[1]} classes; predictor {record.id} has C = {record.classes}")
        given = self.calibrators.probabilities_of(kind, record.calibrator_id, record.classes)
        sets, sizes = restored(record).predict(scores, given, self._key(record.id), self.runtime)
        if "labels" not in arrays:
            return sets, sizes, None
        labels = validate_batch(**{kind: scores}, labels=arrays["labels"]).labels
        assert labels is not None
        return sets, sizes, Coverage.of(sets, sizes, labels)

    def predict_out(self, conformal_id: str, arrays: dict[str, np.ndarray]) -> ConformalPredictOut:
        sets, sizes, coverage = self.predict(conformal_id, arrays)
        out: dict[str, Any] = {
            "sets": [np.flatnonzero(row).tolist() for row in sets],
            "set_size": sizes.tolist(),
        }
        if coverage is not None:
            out |= {
                "coverage": coverage.coverage,
                "mean_set_size": coverage.mean_set_size,
                "class_coverage": [None if math.isnan(c) else float(c) for c in coverage.class_coverage],
                "size_stratified_coverage": {str(k): v for k, v in coverage.size_stratified.items()},
            }
        return ConformalPredictOut.model_validate(out)

    def set_fragment(self, conformal_id: str, logits: Var) -> tuple[Var, Var]:
        """(prediction_set, set_size) of logits [N, C] as a graph fragment (the composed export), through the
        predictor's own calibrator or the softmax."""
        record = self.record(conformal_id, "conformal_id")
        given = self.calibrators.probabilities_of("logits", record.calibrator_id, record.classes)
        return restored(record).set_fragment(given.fragment(logits))

    def onnx(self, conformal_id: str, dtype: np.dtype) -> bytes:
        """The standalone graph: `logits` [N, C] -> `prediction_set` [N, C] bool, `set_size` [N] int64 (the
        stored calibrator inside, else the softmax)."""
        record = self.record(conformal_id)
        given = self.calibrators.probabilities_of("logits", record.calibrator_id, record.classes)
        serialized: bytes = restored(record).graph(given, dtype).SerializeToString()
        return serialized

    def delete(self, conformal_id: str) -> None:
        record = self.record(conformal_id)
        super().delete(conformal_id)
        for kind in ("logits", "probabilities"):
            key = probabilities_key(kind, record.calibrator_id)
            for dtype in INPUT_DTYPES:
                self.runtime.evict(f"{self._key(conformal_id)}:{key}:{dtype}")

    @staticmethod
    def _key(conformal_id: str) -> str:
        return f"conformal:{conformal_id}"

"""Calibration use cases: fit (with its report), store, restore, apply and export."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from app.calibration.schemas import CalibratorOut, CalibratorRequest
from app.core.calibration.fitters import Calibrator
from app.core.calibration.registry import METHODS, restore
from app.core.errors import InputError
from app.core.evaluation import EvaluationPlan, Evaluator, two_columns, validate_batch, validate_binary, validate_scores
from app.core.metrics import BrierMetric, Ece, NllMetric
from app.core.probability_inputs import Probabilities, as_given, softmax
from app.core.runtime import SessionCache
from app.models.runner import ModelRunner
from app.records import new_id, utc_now
from app.sources.files import DataFiles
from app.storage.models import CalibratorRecord
from app.storage.repository import Repository
from app.stored import StoredResource

REPORT_METRICS = (NllMetric(name="nll"), Ece(name="ece"), BrierMetric(name="brier"))
CV_SEED = 0


def before_after(
    labels: np.ndarray, cache: SessionCache, logits: np.ndarray, probabilities: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """NLL, ECE (15 uniform bins) and Brier of the uncalibrated logits (`before`) and of the calibrated
    probabilities (`after`) on the same rows; and both reliability tables (what the web report draws)."""
    report: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    for side, given in (("before", {"logits": logits}), ("after", {"probabilities": probabilities})):
        batch = validate_batch(labels=labels, **given)
        result = Evaluator(EvaluationPlan(batch.layout, (), REPORT_METRICS), cache).evaluate(batch).result
        report[side] = {name: float(value) for name, value in result.metrics.items() if isinstance(value, float)}
        tables[side] = result.reliability
    return report, tables


def _check_fit_data(method: str, logits: np.ndarray, labels: np.ndarray) -> None:
    n, c = logits.shape
    needed = METHODS[method].min_rows(c)
    if n < needed:
        raise InputError(
            "logits", f"{method} has {needed} parameters for C = {c} classes; it needs at least {needed} rows, got {n}"
        )
    present = np.unique(labels).size
    if present < 2:
        raise InputError("labels", f"{method} needs at least 2 distinct classes in the labels, got {present}")
    if method in ("platt", "beta") and c > 2:
        correct = int(np.sum(np.argmax(logits, axis=1) == labels))
        if correct in (0, n):
            raise InputError(
                "labels",
                f"{method} calibrates the top-label confidence for C > 2 and needs both "
                f"right and wrong predictions; all {n} rows are {'right' if correct else 'wrong'}",
            )


def _params(request: CalibratorRequest) -> Any:
    try:
        return METHODS[request.method].params.model_validate(request.params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"params.{where}" if where else "params", first["msg"]) from exc


def _inputs(arrays: dict[str, np.ndarray], prefix: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (logits, labels) of the fit data or of the validation split. [N, V, C] views (view 0
    the original) are accepted by temperature_ca only; all views must be finite."""
    logits, labels = arrays.get(f"{prefix}logits"), arrays.get(f"{prefix}labels")
    if logits is None or labels is None:
        raise InputError(f"{prefix}logits", f"'{prefix}logits' and '{prefix}labels' are both required")
    if logits.ndim != 3:
        batch = validate_batch(logits=logits, labels=labels)
        assert batch.labels is not None
        return batch.matrix, batch.labels
    views, view_labels = _views(logits, labels, f"{prefix}logits", method)
    assert view_labels is not None
    return views, view_labels


def _views(
    logits: np.ndarray, labels: np.ndarray | None, field: str, method: str
) -> tuple[np.ndarray, np.ndarray | None]:
    if method != "temperature_ca":
        raise InputError(field, f"[N, V, C] views are accepted by temperature_ca only, not by {method}")
    if logits.shape[1] < 2:
        raise InputError(field, f"views [N, V, C] need V ≥ 2 (the original and a transform), got V = {logits.shape[1]}")
    original = np.ascontiguousarray(logits[:, 0, :])
    if labels is None:
        scores = validate_scores(original)  # shape and classes
    else:
        batch = validate_batch(logits=original, labels=labels)  # shape, classes and labels
        scores, labels = batch.scores, batch.labels
    if not np.isfinite(logits).all():
        raise InputError(field, "contains NaN or infinite value(s)")
    return np.ascontiguousarray(logits, dtype=scores.dtype), labels


def _original(logits: np.ndarray) -> np.ndarray:
    """The original view of [N, V, C] views, or the logits themselves."""
    return np.ascontiguousarray(logits[:, 0, :]) if logits.ndim == 3 else logits


def fit(
    request: CalibratorRequest, arrays: dict[str, np.ndarray], cache: SessionCache
) -> tuple[Calibrator, dict[str, Any], dict[str, Any], int]:
    """Fit, then report before/after on the fit data, a validation split and k-fold CV when asked."""
    params = _params(request)
    logits, labels = _inputs(arrays, "", request.method)
    _check_fit_data(request.method, _original(logits), labels)
    classes = logits.shape[-1]
    method = METHODS[request.method]
    calibrator = method.create(params).fit(logits, labels, cache)
    report, fit_tables = before_after(labels, cache, _original(logits), calibrator.transform(logits, cache))
    report["fit_info"] = calibrator.fit_info_
    report["reliability"] = {"fit": fit_tables}
    if "validation.logits" in arrays or "validation.labels" in arrays:
        v_logits, v_labels = _inputs(arrays, "validation.", request.method)
        if v_logits.shape[-1] != classes or v_logits.ndim != logits.ndim:
            raise InputError(
                "validation.logits", f"has shape {list(v_logits.shape)}; the fit data has {list(logits.shape)}"
            )
        v_probabilities = calibrator.transform(v_logits, cache)
        report["validation"], report["reliability"]["validation"] = before_after(
            v_labels, cache, _original(v_logits), v_probabilities
        )
    if request.cv is not None:
        report["cv"], report["reliability"]["cv"] = cross_validate(
            request.method, params, logits, labels, request.cv, cache
        )
    return calibrator, params.model_dump(), report, classes


def cross_validate(
    method: str, params: Any, logits: np.ndarray, labels: np.ndarray, folds: int, cache: SessionCache
) -> tuple[dict[str, Any], dict[str, Any]]:
    """k folds of a seeded permutation; each fold calibrated by a fit on the others; metrics (and reliability
    tables) of the
    pooled out-of-fold probabilities against the uncalibrated logits on the same rows."""
    if len(labels) < 2 * folds:
        raise InputError("cv", f"{folds}-fold cross-validation needs at least {2 * folds} rows, got {len(labels)}")
    order = np.random.default_rng(CV_SEED).permutation(len(labels))
    pooled = np.empty((len(labels), logits.shape[-1]), dtype=logits.dtype)
    for held_out in np.array_split(order, folds):
        train = np.setdiff1d(order, held_out, assume_unique=True)
        _check_fit_data(method, _original(logits[train]), labels[train])
        fold = METHODS[method].create(params).fit(logits[train], labels[train], cache)
        pooled[held_out] = fold.transform(logits[held_out], cache)
    report, tables = before_after(labels, cache, _original(logits), pooled)
    return {"folds": folds, "seed": CV_SEED} | report, tables


def probabilities_key(kind: str, calibrator_id: str | None) -> str:
    """The session-cache key of `CalibrationService.probabilities_of`'s fragment."""
    return "probabilities" if kind == "probabilities" else f"logits:{calibrator_id or 'softmax'}"


class CalibrationService(StoredResource[CalibratorRecord, CalibratorOut]):
    """Calibrator use cases: fit and store, look up, list, delete, apply, export; the evaluation service
    applies a stored calibrator through `calibrated_inputs`."""

    def __init__(
        self,
        repository: Repository[CalibratorRecord],
        runtime: SessionCache,
        models: ModelRunner,
        files: DataFiles | None = None,
    ) -> None:
        """`files`: where a `source` may be read from (nowhere by default)."""
        super().__init__(repository, CalibratorOut.model_validate)
        self.runtime, self.models, self.files = runtime, models, files or DataFiles()

    def create(self, request: CalibratorRequest, arrays: dict[str, np.ndarray]) -> CalibratorOut:
        """Fit on the given logits (or read from files), or on a model's logits of the given inputs, and
        store."""
        arrays = self.files.read(request.source, arrays)
        arrays = self.models.resolve(request.model_id, arrays, {"logits": "logits"}, ("", "validation."))
        calibrator, params, report, classes = fit(request, arrays, self.runtime)
        record = self.repository.add(
            CalibratorRecord(
                id=new_id(),
                created_at=utc_now(),
                method=request.method,
                classes=classes,
                model=request.model,
                dataset=request.dataset,
                tags=request.tags,
                params=params,
                fitted=calibrator.fitted(),
                fit_report=report,
            )
        )
        return self.answer(record)

    def restored(self, record: CalibratorRecord) -> Calibrator:
        return restore(record.method, record.params, record.fitted)

    def apply(self, calibrator_id: str, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of logits with the calibrator's class count (422 names both counts);
        a calibrator fitted on views takes [N, V, C] views; a two-class one takes binary [N] log-odds too
        and answers [N] probabilities of class 1 (api.md)."""
        record = self.record(calibrator_id)
        if logits.ndim == 1:
            if record.classes != 2:
                raise InputError(
                    "logits", f"binary [N] logits need a two-class calibrator; {record.id} has C = {record.classes}"
                )
            columns = two_columns(validate_binary(logits, "logits"))
            return np.ascontiguousarray(self.restored(record).transform(columns, self.runtime)[:, 1])
        if logits.ndim >= 2 and logits.shape[-1] != record.classes:
            raise InputError(
                "logits",
                f"has C = {logits.shape[-1]} classes; calibrator {record.id} was fitted on C = {record.classes}",
            )
        calibrator = self.restored(record)
        if calibrator.takes_views:
            if logits.ndim != 3:
                raise InputError(
                    "logits",
                    f"calibrator {record.id} was fitted on views: send [N, V, C] (view 0 the original), "
                    f"got shape {list(logits.shape)}",
                )
            views, _ = _views(logits, None, "logits", record.method)
            return calibrator.transform(views, self.runtime)
        return calibrator.transform(validate_scores(logits), self.runtime)

    def probabilities_of(self, kind: str, calibrator_id: str | None, classes: int) -> Probabilities:
        """How a graph that ranks probabilities reads its input (conformal sets, confidence estimates):
        given probabilities as they are; logits through this calibrator (C must match), else the softmax."""
        key = probabilities_key(kind, calibrator_id)
        if kind == "probabilities":
            return Probabilities("probabilities", as_given, key)
        if calibrator_id is None:
            return Probabilities("logits", softmax, key)
        record = self.record(calibrator_id, "calibrator_id")
        if record.classes != classes:
            raise InputError("logits", f"has C = {classes} classes; calibrator {record.id} has C = {record.classes}")
        calibrator = self.restored(record)
        if calibrator.takes_views:
            raise InputError("calibrator_id", f"calibrator {record.id} takes [N, V, C] views, not [N, C] logits")
        return Probabilities("logits", calibrator.apply_fragment, key)

    def calibrated_inputs(self, calibrator_id: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An evaluation's inputs with `logits` replaced by this calibrator's probabilities."""
        if "logits" not in arrays:
            raise InputError("logits", "calibrator_id needs 'logits' (a calibrator maps logits to probabilities)")
        rest = {k: v for k, v in arrays.items() if k != "logits"}
        return rest | {"probabilities": self.apply(calibrator_id, arrays["logits"])}

    def onnx(self, calibrator_id: str, dtype: np.dtype) -> bytes:
        """The standalone apply model: input `logits` [N, C] -> output `probabilities`."""
        serialized: bytes = self.restored(self.record(calibrator_id)).apply_graph(dtype).SerializeToString()
        return serialized

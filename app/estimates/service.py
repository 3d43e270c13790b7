"""Estimate use cases: compute from confidences and store, look up, list, delete. The estimators are
`app.core.estimates`; the calibrator service decides how logits become probabilities."""

from __future__ import annotations

import math

import numpy as np

from app.calibration.service import CalibrationService
from app.core.errors import InputError
from app.core.estimates import Reference, TopLabel, atc, cbpe, doc
from app.core.evaluation import validate_batch, validate_scores
from app.core.runtime import SessionCache
from app.estimates.schemas import NEEDS_REFERENCE, EstimateOut, EstimateRequest, ReferenceOut
from app.models.runner import ModelRunner
from app.records import new_id, utc_now
from app.sources.files import DataFiles
from app.storage.models import EstimateRecord
from app.storage.repository import Repository
from app.stored import StoredResource

ESTIMATORS = {"cbpe": lambda top, reference: cbpe(top), "atc": atc, "doc": doc}


def estimate_out(record: EstimateRecord) -> EstimateOut:
    return EstimateOut.model_validate(record)


class EstimateService(StoredResource[EstimateRecord, EstimateOut]):
    def __init__(
        self,
        repository: Repository[EstimateRecord],
        runtime: SessionCache,
        models: ModelRunner,
        calibrators: CalibrationService,
        files: DataFiles | None = None,
    ) -> None:
        super().__init__(repository, estimate_out)
        self.runtime, self.models, self.calibrators = runtime, models, calibrators
        self.files = files or DataFiles()

    def create(self, request: EstimateRequest, arrays: dict[str, np.ndarray]) -> EstimateOut:
        """Estimate the rows' accuracy by each method asked, and store the estimate."""
        arrays = self.files.read(request.source, arrays)
        arrays = self.models.resolve(request.model_id, arrays, {"logits": "logits"}, ("", "reference."))
        has_reference = any(k.startswith("reference.") for k in arrays)
        methods = request.methods or (["cbpe", "atc", "doc"] if has_reference else ["cbpe"])
        needing = [m for m in methods if m in NEEDS_REFERENCE]
        if needing and not has_reference:
            raise InputError("methods", f"{', '.join(needing)} need a labelled `reference`")
        kind = _kind(arrays, "")
        if request.calibrator_id is not None and kind != "logits":
            raise InputError("calibrator_id", "a calibrator maps logits: give `logits` (or a model's inputs)")
        scores = validate_scores(arrays[kind], kind)  # type: ignore[arg-type]
        classes = scores.shape[1]
        given = self.calibrators.probabilities_of(kind, request.calibrator_id, classes)
        top = TopLabel.of(scores, given, self.runtime)
        reference = self._reference(arrays, request.calibrator_id, classes) if has_reference else None
        estimates = {f"accuracy_{m}": ESTIMATORS[m](top, reference) for m in dict.fromkeys(methods)}
        record = self.repository.add(
            EstimateRecord(
                id=new_id(),
                created_at=utc_now(),
                n=len(scores),
                calibrator_id=request.calibrator_id,
                model_id=request.model_id,
                model=request.model,
                dataset=request.dataset,
                tags=request.tags,
                estimates=estimates,
                mean_confidence=top.mean_confidence,
                reference=None if reference is None else _reference_out(reference).model_dump(),
            )
        )
        return self.answer(record)

    def _reference(self, arrays: dict[str, np.ndarray], calibrator_id: str | None, classes: int) -> Reference:
        """The labelled reference, through the same calibrator (its C must be the rows')."""
        kind = _kind(arrays, "reference.")
        field = f"reference.{kind}"
        try:
            batch = validate_batch(**{kind: arrays[field]}, labels=arrays.get("reference.labels"))
        except InputError as error:
            raise InputError(f"reference.{error.field}", error.message) from error
        if batch.layout.binary or batch.labels is None or batch.classes != classes:
            raise InputError(field, f"must be [M, C] with the rows' C = {classes}, with `reference.labels`")
        given = self.calibrators.probabilities_of(kind, calibrator_id, classes)
        return Reference.of(TopLabel.of(batch.scores, given, self.runtime), batch.labels)


def _kind(arrays: dict[str, np.ndarray], prefix: str) -> str:
    """`logits` or `probabilities`: exactly one given under `prefix`."""
    given = [k for k in ("logits", "probabilities") if prefix + k in arrays]
    if len(given) != 1:
        raise InputError(f"{prefix}logits", f"give exactly one of '{prefix}logits' and '{prefix}probabilities'")
    return given[0]


def _reference_out(reference: Reference) -> ReferenceOut:
    threshold = None if math.isinf(reference.atc_threshold) else reference.atc_threshold
    return ReferenceOut(
        n=reference.n,
        accuracy=reference.accuracy,
        mean_confidence=reference.mean_confidence,
        atc_threshold=threshold,
    )

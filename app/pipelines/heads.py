"""The heads of a model (calibrator, detector, SDM fit, by id) and the one check that they fit it: class
counts (C), embedding widths (D), layer names, and the model outputs they read. `/predict`, model
evaluations, the composed export and pipelines all call it before running or building anything, so a
head that does not fit is a 422 naming the field, never a failure halfway through a run."""

from __future__ import annotations

from dataclasses import dataclass

from app.calibration.service import CalibrationService
from app.conformal.service import ConformalService
from app.core.errors import InputError
from app.ood.detectors import DetectorService
from app.sdm.service import SdmService
from app.storage.models import ModelRecord


@dataclass(frozen=True)
class Heads:
    """The fitted heads a prediction applies, by id."""

    calibrator_id: str | None = None
    detector_id: str | None = None
    sdm_id: str | None = None
    conformal_id: str | None = None


class HeadCheck:
    """The head services (calibrators, detectors, SDM, conformal predictors) of a composition, and whether
    given heads fit a model."""

    def __init__(
        self,
        calibrators: CalibrationService,
        detectors: DetectorService,
        sdm: SdmService,
        conformal: ConformalService,
    ) -> None:
        self.calibrators, self.detectors, self.sdm, self.conformal = calibrators, detectors, sdm, conformal

    def outputs(self, record: ModelRecord, heads: Heads, return_embedding: bool = False) -> list[str]:
        """The model outputs the heads read (logits first); 422 when a head does not fit the model."""
        wanted = [record.logits_output]
        if heads.calibrator_id is not None:
            calibrator = self.calibrators.record(heads.calibrator_id)
            if record.classes is not None and calibrator.classes != record.classes:
                classes = calibrator.classes
                raise InputError("calibrator_id", f"calibrator has C = {classes}; the model has C = {record.classes}")
            if self.calibrators.restored(calibrator).takes_views:
                raise InputError("calibrator_id", "the calibrator was fitted on [N, V, C] views; a model gives [N, C]")
        if heads.conformal_id is not None:
            predictor = self.conformal.record(heads.conformal_id, "conformal_id")
            expected = 2 if record.binary else record.classes
            if expected is not None and predictor.classes != expected:
                raise InputError(
                    "conformal_id", f"the predictor has C = {predictor.classes}; the model has C = {record.classes}"
                )
        needs_embedding = return_embedding or heads.sdm_id is not None
        if heads.detector_id is not None:
            detector = self.detectors.record(heads.detector_id)
            layers = detector.params.get("layers")
            if layers:
                missing = [name for name in layers if name not in {o["name"] for o in record.outputs}]
                if missing:
                    raise InputError("detector_id", f"the detector's layers {missing} are not outputs of the model")
                widths = dict(zip(layers, detector.params["dims"], strict=True))
                for name in layers:
                    _check_width(record, name, int(widths[name]), "detector_id", f"detector's layer {name!r}")
                wanted += [name for name in layers if name not in wanted]
            else:
                _check_width(record, record.embedding_output, detector.dim, "detector_id", "detector")
                needs_embedding = True
        if heads.sdm_id is not None:
            estimator = self.sdm.record(heads.sdm_id)
            _check_width(record, record.embedding_output, estimator.dim, "sdm_id", "SDM estimator")
            if record.classes is not None and estimator.classes != record.classes:
                raise InputError(
                    "sdm_id", f"SDM estimator has C = {estimator.classes}; the model has C = {record.classes}"
                )
        if needs_embedding:
            if record.embedding_output is None:
                raise InputError("inputs", "the model was uploaded without an `embedding_output`")
            if record.embedding_output not in wanted:
                wanted.append(record.embedding_output)
        return wanted


def _check_width(record: ModelRecord, output: str | None, dim: int, field: str, noun: str) -> None:
    if output is None:
        raise InputError(field, f"the {noun} scores embeddings; the model has no `embedding_output`")
    width = next(o["shape"][1] for o in record.outputs if o["name"] == output)
    if width > 0 and width != dim:
        raise InputError(field, f"the {noun} was fitted on D = {dim}; the model's output {output!r} has D = {width}")

"""Detector use cases: fit and store, look up, list, delete, score (the estimators are
`app.core.detectors`; `app.ood.methods` builds and restores them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from spox import Var

from app.core.conformal import benjamini_hochberg, conformal_p_values, p_value_fragment
from app.core.detectors import LayerEnsemble
from app.core.errors import InputError
from app.core.fold import merged_fold
from app.core.lru import LruCache
from app.core.runtime import SessionCache
from app.core.validation import float_matrix
from app.distributed.cluster import Cluster
from app.models.runner import ModelRunner
from app.ood.methods import AnyDetector, fit_detector, layers_of, restored, streams
from app.ood.schemas import DetectorOut, DetectorRequest
from app.records import new_id, utc_now
from app.sources.files import DataFiles
from app.storage.blobs import decode_arrays, encode_arrays
from app.storage.models import DetectorRecord
from app.storage.repository import Repository
from app.stored import StoredResource

CALIBRATION = "calibration."
V = TypeVar("V")


@dataclass(frozen=True)
class Fitted:
    """A stored detector restored: its estimator, and its calibration set's sorted scores (if any)."""

    detector: AnyDetector
    calibration: np.ndarray | None


def _split(given: Mapping[str, V]) -> tuple[dict[str, V], dict[str, V]]:
    """(the fit's fields, the calibration set's `calibration.*` fields)."""
    fit = {k: v for k, v in given.items() if not k.startswith(CALIBRATION)}
    return fit, {k: v for k, v in given.items() if k.startswith(CALIBRATION)}


class DetectorService(StoredResource[DetectorRecord, DetectorOut]):
    """Detector use cases. Restored estimators are kept per detector (KNN scoring reads its whole
    support on every request; records never change); deleting one evicts it and its scoring sessions."""

    DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

    def __init__(
        self,
        repository: Repository[DetectorRecord],
        runtime: SessionCache,
        models: ModelRunner,
        files: DataFiles | None = None,
        cluster: Cluster | None = None,
        capacity: int = 8,
    ) -> None:
        """`files`: where a `source` may be read from (nowhere by default); `cluster`: the Dask cluster whose
        workers gather a streamed fit's statistics (none: this process)."""
        super().__init__(repository, DetectorOut.model_validate)
        self.runtime, self.models, self.files, self.cluster = runtime, models, files or DataFiles(), cluster
        self._fitted: LruCache[Fitted] = LruCache(capacity)

    def create(self, request: DetectorRequest, arrays: dict[str, np.ndarray]) -> DetectorOut:
        """Fit and store. Features from files stream through a method that fits from chunks (its
        statistics gathered on the cluster's workers when there is one); other fits read them whole. A
        calibration set's scores are stored sorted, for conformal p-values."""
        fit_files, calibration_files = _split(request.source or {})
        calibration = self.files.read(calibration_files, _split(arrays)[1])
        calibration = self.models.resolve(request.model_id, calibration, {"features": "features"}, (CALIBRATION,))
        arrays = _split(arrays)[0]
        if "features" in fit_files and request.model_id is None and streams(request):
            rows = self.files.open(fit_files, arrays)
            gather = merged_fold if self.cluster is None else self.cluster.gather()
            detector, params = fit_detector(request, {}, self.runtime, rows, gather)
        else:
            arrays = self.files.read(fit_files, arrays)
            arrays = self.models.resolve(request.model_id, arrays, {"features": "features"}, ("",))
            detector, params = fit_detector(request, arrays, self.runtime)
        record_id = new_id()
        fitted = detector.fitted_arrays()
        fit_info = dict(detector.fit_info_)
        if calibration:
            scores = self._scores(detector, record_id, {k.removeprefix(CALIBRATION): v for k, v in calibration.items()},
                                  "calibration.features")  # fmt: skip
            fitted["calibration_scores"] = np.sort(scores.astype(np.float64))
            fit_info["n_calibration"] = len(scores)
        dim = sum(detector.dims) if isinstance(detector, LayerEnsemble) else detector.dim
        record = self.repository.add(
            DetectorRecord(
                id=record_id,
                created_at=utc_now(),
                method=request.method,
                classes=detector.classes,
                dim=dim,
                model=request.model,
                dataset=request.dataset,
                tags=request.tags,
                params=params,
                fit_info=fit_info,
                arrays=encode_arrays(fitted),
            )
        )
        return self.answer(record)

    def delete(self, detector_id: str) -> None:
        super().delete(detector_id)
        self._fitted.evict(detector_id)
        for dtype in self.DTYPES:
            self.runtime.evict(f"{self._key(detector_id)}:{dtype}")
            self.runtime.evict(f"{self._key(detector_id)}:logits:{dtype}")

    def detector(self, record: DetectorRecord) -> AnyDetector:
        """The stored detector's fitted estimator (for the service and for exports)."""
        return self._restored(record).detector

    def calibration_scores(self, record: DetectorRecord) -> np.ndarray | None:
        """The sorted scores of the detector's calibration set, if it was fitted with one."""
        return self._restored(record).calibration

    def _restored(self, record: DetectorRecord) -> Fitted:
        def build() -> Fitted:
            arrays = decode_arrays(record.arrays, f"detector {record.id}")
            return Fitted(restored(record.method, record.params, arrays), arrays.get("calibration_scores"))

        return self._fitted.get(record.id, build)

    def score(
        self, detector_id: str, arrays: dict[str, np.ndarray], field: str = "features"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Outlier scores (higher = more OOD) and nearest classes of `field` (an ensemble's layers as
        `field.<layer>`), in chunks."""
        record = self.record(detector_id)
        detector = self.detector(record)
        if isinstance(detector, LayerEnsemble):
            return detector.score(layers_of(arrays, field), self._key(detector_id), field, self.runtime)
        features = float_matrix(arrays.get(field), field, record.dim)
        return detector.score(features, self._key(detector_id), self.runtime)

    def score_rows(
        self,
        detector_id: str,
        arrays: dict[str, np.ndarray],
        alpha: float = 0.05,
        fdr: bool = False,
        return_logits: bool = False,
    ) -> dict[str, np.ndarray]:
        """`scores` and `nearest_class`; with `return_logits` a Gaussian detector's class `logits`; with a
        calibration set the conformal `p_values` and `is_ood` (p ≤ α per row, or the Benjamini–Hochberg
        rejections at α over these rows with `fdr`)."""
        scores, nearest = self.score(detector_id, arrays)
        out = {"scores": scores, "nearest_class": nearest}
        if return_logits:
            record = self.record(detector_id)
            detector = self.detector(record)
            if isinstance(detector, LayerEnsemble):
                raise InputError("return_logits", "a feature ensemble is not a generative classifier")
            features = float_matrix(arrays.get("features"), "features", record.dim)
            out["logits"] = detector.logits(features, self._key(detector_id), self.runtime)
        calibration = self.calibration_scores(self.record(detector_id))
        if calibration is not None:
            p_values = conformal_p_values(calibration, scores.astype(np.float64))
            out |= {"p_values": p_values, "is_ood": benjamini_hochberg(p_values, alpha) if fdr else p_values <= alpha}
        return out

    def _scores(self, detector: AnyDetector, detector_id: str, arrays: dict[str, np.ndarray], field: str) -> np.ndarray:
        """A fitted (not yet stored) detector's scores of `arrays` (`features`, or its layers)."""
        if isinstance(detector, LayerEnsemble):
            return detector.score(layers_of(arrays, "features"), self._key(detector_id), field, self.runtime)[0]
        features = float_matrix(arrays.get("features"), field, detector.dim)
        return detector.score(features, self._key(detector_id), self.runtime)[0]

    def score_fragment(self, detector_id: str, features: dict[str, Var]) -> Var:
        """The detector's outlier score as a fragment of Vars keyed like `model_outputs` (`features`, or
        `features.<layer>` for an ensemble)."""
        detector = self.detector(self.record(detector_id))
        if isinstance(detector, LayerEnsemble):
            return detector.fragment({name: features[f"features.{name}"] for name in detector.names})
        return detector.model().fragment(features["features"])[0]

    def p_value_fragment(self, detector_id: str, scores: Var) -> Var | None:
        """The conformal p-values of the detector's scores as a fragment, if it has a calibration set."""
        calibration = self.calibration_scores(self.record(detector_id))
        return None if calibration is None else p_value_fragment(calibration, scores)

    def model_features(
        self, detector_id: str, outputs: dict[str, np.ndarray], embedding_output: str | None
    ) -> dict[str, np.ndarray]:
        """The arrays `score` reads from a model's outputs: its layers for an ensemble, else the embedding."""
        return {k: outputs[v] for k, v in self.model_outputs(detector_id, embedding_output).items()}

    def model_outputs(self, detector_id: str, embedding_output: str | None) -> dict[str, str]:
        """{array `score` reads: model output name} for a detector applied to a model."""
        layers = self.record(detector_id).params.get("layers")
        if layers:
            return {f"features.{name}": name for name in layers}
        if embedding_output is None:
            raise InputError("detector_id", "the detector scores embeddings; the model has no `embedding_output`")
        return {"features": embedding_output}

    @staticmethod
    def _key(detector_id: str) -> str:
        return f"detector:{detector_id}"

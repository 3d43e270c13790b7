"""Detector use cases: fit and store, look up, list, delete, score (the estimators are
`app.core.detectors`; `app.ood.methods` builds and restores them)."""

from __future__ import annotations

import numpy as np
from spox import Var

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
        self._fitted: LruCache[AnyDetector] = LruCache(capacity)

    def create(self, request: DetectorRequest, arrays: dict[str, np.ndarray]) -> DetectorOut:
        """Fit and store. Features from files stream through a method that fits from chunks (its
        statistics gathered on the cluster's workers when there is one); other fits read them whole."""
        if request.source and "features" in request.source and request.model_id is None and streams(request):
            rows = self.files.open(request.source, arrays)
            gather = merged_fold if self.cluster is None else self.cluster.gather()
            detector, params = fit_detector(request, {}, self.runtime, rows, gather)
        else:
            arrays = self.files.read(request.source, arrays)
            arrays = self.models.resolve(request.model_id, arrays, {"features": "features"}, ("",))
            detector, params = fit_detector(request, arrays, self.runtime)
        dim = sum(detector.dims) if isinstance(detector, LayerEnsemble) else detector.dim
        record = self.repository.add(
            DetectorRecord(
                id=new_id(),
                created_at=utc_now(),
                method=request.method,
                classes=detector.classes,
                dim=dim,
                model=request.model,
                dataset=request.dataset,
                tags=request.tags,
                params=params,
                fit_info=detector.fit_info_,
                arrays=encode_arrays(detector.fitted_arrays()),
            )
        )
        return self.answer(record)

    def delete(self, detector_id: str) -> None:
        super().delete(detector_id)
        self._fitted.evict(detector_id)
        for dtype in self.DTYPES:
            self.runtime.evict(f"{self._key(detector_id)}:{dtype}")

    def detector(self, record: DetectorRecord) -> AnyDetector:
        """The stored detector's fitted estimator (for the service and for exports)."""
        return self._fitted.get(
            record.id,
            lambda: restored(record.method, record.params, decode_arrays(record.arrays, f"detector {record.id}")),
        )

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

    def score_fragment(self, detector_id: str, features: dict[str, Var]) -> Var:
        """The detector's outlier score as a fragment of Vars keyed like `model_outputs` (`features`, or
        `features.<layer>` for an ensemble)."""
        detector = self.detector(self.record(detector_id))
        if isinstance(detector, LayerEnsemble):
            return detector.fragment({name: features[f"features.{name}"] for name in detector.names})
        return detector.model().fragment(features["features"])[0]

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

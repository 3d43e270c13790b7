"""Pipeline use cases: a named, versioned model with its heads. Creation checks the heads against the
model, builds the composed export once, stores it content-addressed and has a worker load it (so
onnxruntime's refusals surface at creation, not at the first V2 call); the record keeps the export's
signature, which V2 metadata and input validation read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.models.workers import WorkerPool
from app.pipelines.export import ExportService
from app.pipelines.heads import Heads
from app.pipelines.schemas import PipelineOut, PipelineRequest
from app.records import new_id, utc_now
from app.storage.artifacts import ArtifactStore
from app.storage.models import PipelineRecord
from app.storage.repository import ArtifactReferences, PipelineRepository
from app.stored import RecentReads, StoredResource

NAME_TTL_S = 1.0  # how long another process's new version or deletion may go unseen here


class PipelineService(StoredResource[PipelineRecord, PipelineOut]):
    def __init__(
        self,
        repository: PipelineRepository,
        exports: ExportService,
        artifacts: ArtifactStore,
        references: ArtifactReferences,
        workers: WorkerPool,
    ) -> None:
        super().__init__(repository, PipelineOut.model_validate)
        self.repository: PipelineRepository = repository
        self.exports, self.artifacts, self.workers = exports, artifacts, workers
        self.references = references
        self._named: RecentReads[PipelineRecord] = RecentReads(NAME_TTL_S)  # V2 resolves a name on every call

    def create(self, request: PipelineRequest) -> PipelineOut:
        heads = Heads(request.calibrator_id, request.detector_id, request.sdm_id, request.conformal_id)
        export = self.exports.export(request.model_id, heads, np.dtype(request.dtype) if request.dtype else None)
        with self.artifacts.lock():
            digest = self.artifacts.put(export.data)
            record = PipelineRecord(
                id=new_id(),
                created_at=utc_now(),
                name=request.name,
                version=0,
                model_id=request.model_id,
                calibrator_id=request.calibrator_id,
                detector_id=request.detector_id,
                sdm_id=request.sdm_id,
                conformal_id=request.conformal_id,
                dtype=export.dtype.name,
                sha256=digest,
                size_bytes=len(export.data),
                inputs=[i.model_dump() for i in export.inputs],
                outputs=[o.model_dump() for o in export.outputs],
                tags=request.tags,
            )
            try:
                self.workers.load(digest, str(self.artifacts.path(digest)))
                added = self.repository.add_version(record)
                self._named.forget()
                return self.answer(added)
            except BaseException:
                self.artifacts.remove_unused(digest, self.references.in_use)
                raise

    def named(self, name: str, version: int | None = None) -> PipelineRecord:
        """The version of a name (its latest when None), read at most once per NAME_TTL_S per process:
        this process sees its own creations and deletions at once, another process's within that time."""
        return self._named.get((name, version), lambda: self.repository.named(name, version))

    def delete(self, pipeline_id: str) -> None:
        with self.artifacts.lock():
            digest = self.repository.delete_pipeline(pipeline_id)
            self._named.forget()
            self.artifacts.remove_unused(digest, self.references.in_use)

    def file(self, pipeline_id: str) -> tuple[str, Path]:
        """The composed export, and the name to save it under."""
        record = self.record(pipeline_id)
        return f"{record.name}-v{record.version}.onnx", self.artifacts.path(record.sha256)

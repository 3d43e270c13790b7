"""Model use cases: intake of an upload (checked, loaded once by a worker, stored content-addressed),
look up, list, delete, and the bytes back. Running a model is `runner.ModelRunner`; a model with its
heads is `app.pipelines.predict`."""

from __future__ import annotations

from pathlib import Path

from app.models import intake
from app.models.schemas import ModelOut, ModelRequest
from app.models.workers import WorkerPool
from app.records import new_id, utc_now
from app.storage.artifacts import ArtifactStore, ArtifactWriter
from app.storage.models import ModelRecord
from app.storage.repository import ArtifactReferences, ModelRepository
from app.stored import RecentReads, StoredResource


class ModelService(StoredResource[ModelRecord, ModelOut]):
    def __init__(
        self,
        repository: ModelRepository,
        artifacts: ArtifactStore,
        references: ArtifactReferences,
        workers: WorkerPool,
        recent: RecentReads[ModelRecord],
    ) -> None:
        super().__init__(repository, ModelOut.model_validate)
        self.repository: ModelRepository = repository
        self.artifacts, self.references, self.workers = artifacts, references, workers
        self.recent = recent  # the runner's recent reads of model records: forgotten on delete

    def create(self, request: ModelRequest, upload: ArtifactWriter) -> ModelOut:
        """Check the uploaded file (parse, refuse, describe, let onnxruntime load it in a worker), then
        name it by digest and store the record; a refused upload leaves no file and no row."""
        upload.close()
        model = intake.parse(upload.temp_path)
        intake.check(model)
        info = intake.describe(model, request)
        del model
        self.workers.load(upload.digest, str(upload.temp_path))  # session creation, in a worker (cached by digest)
        with self.artifacts.lock():
            digest = upload.commit()
            record = ModelRecord(
                id=new_id(),
                created_at=utc_now(),
                name=request.name,
                sha256=digest,
                size_bytes=upload.size,
                opset=info.opset,
                inputs=[i.model_dump() for i in info.inputs],
                outputs=[o.model_dump() for o in info.outputs],
                logits_output=info.logits_output,
                embedding_output=info.embedding_output,
                feature_outputs=info.feature_outputs,
                classes=info.classes,
                binary=info.binary,
                tags=request.tags,
            )
            try:
                return self.answer(self.repository.add(record))
            except BaseException:
                self.artifacts.remove_unused(digest, self.references.in_use)
                raise

    def delete(self, model_id: str) -> None:
        with self.artifacts.lock():
            self.artifacts.remove_unused(self.repository.delete_model(model_id), self.references.in_use)
            self.recent.forget()

    def file(self, model_id: str) -> tuple[str, Path]:
        """The uploaded file, and the name to save it under."""
        record = self.record(model_id)
        return f"{record.name}.onnx", self.artifacts.path(record.sha256)

"""Model use cases: intake of an upload (checked, stored content-addressed), look up, list, delete, the
bytes back, and predict: the model runs in the worker pool chunk by chunk, its heads (calibrator,
detector, SDM) in this process through their own services, after checking that they fit the model."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.calibration.service import CalibrationService
from app.core.calibration import apply
from app.core.errors import InputError
from app.core.graphrun import mapped
from app.core.runtime import SessionCache
from app.models import intake
from app.models.schemas import ModelOut, ModelRequest, TensorInfo
from app.models.workers import WorkerPool
from app.ood.detectors import DetectorService
from app.records import new_id, rfc3339, utc_now
from app.sdm.service import SdmService, npz_columns
from app.storage.artifacts import ArtifactStore, ArtifactWriter
from app.storage.models import ModelRecord
from app.storage.repository import ModelRepository


@dataclass(frozen=True)
class Heads:
    """The fitted heads a prediction applies, by id."""

    calibrator_id: str | None = None
    detector_id: str | None = None
    sdm_id: str | None = None


class ModelService:
    def __init__(
        self,
        repository: ModelRepository,
        artifacts: ArtifactStore,
        workers: WorkerPool,
        runtime: SessionCache,
        calibrators: CalibrationService,
        detectors: DetectorService,
        sdm: SdmService,
        batch_rows: int,
    ) -> None:
        self.repository, self.artifacts, self.workers, self.runtime = repository, artifacts, workers, runtime
        self.calibrators, self.detectors, self.sdm = calibrators, detectors, sdm
        self.batch_rows = batch_rows
        self._files = threading.Lock()  # an upload's rename + insert vs a delete's count + unlink

    def create(self, request: ModelRequest, upload: ArtifactWriter) -> ModelRecord:
        """Check the uploaded file (parse, refuse, describe, let onnxruntime load it in a worker), then
        name it by digest and store the record; a refused upload leaves no file and no row."""
        upload.close()
        model = intake.parse(upload.temp_path)
        intake.check(model)
        info = intake.describe(model, request)
        del model
        self.workers.load(upload.digest, str(upload.temp_path))  # session creation, in a worker (cached by digest)
        with self._files:
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
                tags=request.tags,
            )
            try:
                return self.repository.add(record)
            except BaseException:
                self._remove_if_unused(record)
                raise

    def _remove_if_unused(self, record: ModelRecord) -> None:
        if not self.repository.page(1, None, sha256=record.sha256)[0]:
            self.artifacts.remove(record.sha256)

    def get(self, model_id: str) -> ModelRecord:
        return self.repository.get(model_id)

    def page(self, limit: int, cursor: str | None, name: str | None) -> tuple[list[ModelRecord], str | None]:
        return self.repository.page(limit, cursor, name=name)

    def delete(self, model_id: str) -> None:
        with self._files:
            unused = self.repository.delete_model(model_id)
            if unused is not None:
                self.artifacts.remove(unused)

    def file(self, model_id: str) -> tuple[ModelRecord, Path]:
        record = self.get(model_id)
        return record, self.artifacts.path(record.sha256)

    # ---- running -----------------------------------------------------------------------------------

    def outputs(self, record: ModelRecord, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """The named outputs for validated inputs, run in chunks of CALIPER_MODEL_BATCH_ROWS rows (a fixed
        batch dimension runs in batches of that size, the last one padded)."""
        inputs = validated_inputs(record, arrays)
        n = len(next(iter(inputs.values())))
        fixed = {i["shape"][0] for i in record.inputs if i["shape"] and i["shape"][0] > 0}
        step = next(iter(fixed)) if fixed else self.batch_rows
        path = str(self.artifacts.path(record.sha256))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, n, step):
            chunk = {k: v[start : start + step] for k, v in inputs.items()}
            rows = len(next(iter(chunk.values())))
            if fixed and rows < step:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - rows, axis=0)]) for k, v in chunk.items()}
            for name, value in self.workers.run(record.sha256, path, chunk, names).items():
                parts[name].append(value[:rows])
        return {name: np.concatenate(values) for name, values in parts.items()}

    def predict(
        self, model_id: str, arrays: dict[str, np.ndarray], heads: Heads, return_embedding: bool = False
    ) -> dict[str, np.ndarray]:
        """The columns of api.md's predict: logits, probabilities (calibrated, or the softmax), prediction,
        confidence, and embedding, ood_score and sdm.* when asked."""
        record = self.get(model_id)
        wanted = self._check_heads(record, heads, return_embedding)
        out = self.outputs(record, arrays, wanted)
        logits = out[record.logits_output]
        if record.classes is not None and logits.shape[1] != record.classes:
            raise InputError("inputs", f"the model produced C = {logits.shape[1]}; it declares {record.classes}")
        if heads.calibrator_id is not None:
            probabilities = self.calibrators.apply(heads.calibrator_id, logits)
        else:
            probabilities = softmax(logits, self.runtime)
        columns = {
            "logits": logits,
            "probabilities": probabilities,
            "prediction": np.argmax(probabilities, axis=1),
            "confidence": np.max(probabilities, axis=1),
        }
        embedding = out.get(record.embedding_output or "")
        if return_embedding and embedding is not None:
            columns["embedding"] = embedding
        if heads.detector_id is not None:
            columns["ood_score"], _ = self.detectors.score(heads.detector_id, self._features(record, heads, out))
        if heads.sdm_id is not None:
            _, scores = self.sdm.score(heads.sdm_id, {"embeddings": embedding, "logits": logits})  # type: ignore[dict-item]
            columns |= {f"sdm.{k}": v for k, v in npz_columns(scores).items()}
        return columns

    def _features(self, record: ModelRecord, heads: Heads, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert heads.detector_id is not None
        layers = self.detectors.get(heads.detector_id).params.get("layers")
        if layers:
            return {f"features.{name}": out[name] for name in layers}
        return {"features": out[record.embedding_output or ""]}

    def _check_heads(self, record: ModelRecord, heads: Heads, return_embedding: bool) -> list[str]:
        """The outputs to compute; 422 before running anything when a head does not fit the model."""
        wanted = [record.logits_output]
        if heads.calibrator_id is not None:
            classes = self.calibrators.get(heads.calibrator_id).classes
            if record.classes is not None and classes != record.classes:
                raise InputError(
                    "calibrator_id", f"calibrator has C = {classes} classes; the model has C = {record.classes}"
                )
        needs_embedding = return_embedding or heads.sdm_id is not None
        if heads.detector_id is not None:
            detector = self.detectors.get(heads.detector_id)
            layers = detector.params.get("layers")
            if layers:
                missing = [name for name in layers if name not in {o["name"] for o in record.outputs}]
                if missing:
                    raise InputError("detector_id", f"the detector's layers {missing} are not outputs of the model")
                wanted += [name for name in layers if name not in wanted]
            else:
                self._check_width(record, detector.dim, "detector_id", "detector")
                needs_embedding = True
        if heads.sdm_id is not None:
            estimator = self.sdm.get(heads.sdm_id)
            self._check_width(record, estimator.dim, "sdm_id", "SDM estimator")
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

    @staticmethod
    def _check_width(record: ModelRecord, dim: int, field: str, noun: str) -> None:
        if record.embedding_output is None:
            raise InputError(field, f"the {noun} scores embeddings; the model has no `embedding_output`")
        width = next(o["shape"][1] for o in record.outputs if o["name"] == record.embedding_output)
        if width > 0 and width != dim:
            raise InputError(field, f"the {noun} was fitted on D = {dim}; the model's embedding has D = {width}")


def softmax(logits: np.ndarray, runtime: SessionCache) -> np.ndarray:
    dtype = logits.dtype
    graph = lambda: apply.standalone(lambda z: apply.temperature(z, 1.0), dtype)  # noqa: E731
    return mapped(f"softmax:{dtype}", graph, {"logits": logits}, runtime)


def validated_inputs(record: ModelRecord, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's inputs by name, cast where the kind matches (JSON numbers arrive as float64), with
    trailing shapes checked and one batch size; 422 naming the input otherwise."""
    expected = {i["name"]: TensorInfo.model_validate(i) for i in record.inputs}
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise InputError(f"inputs.{unknown[0]}", f"the model has no input {unknown[0]!r} (inputs: {sorted(expected)})")
    out: dict[str, np.ndarray] = {}
    for name, info in expected.items():
        field = f"inputs.{name}"
        if name not in arrays:
            raise InputError(field, "required (the model has this input)")
        array, wanted = arrays[name], np.dtype(info.dtype)
        if array.ndim != len(info.shape):
            raise InputError(field, f"has rank {array.ndim}; the model's input is {info.shape}")
        for axis, (got, want) in enumerate(zip(array.shape, info.shape, strict=True)):
            if axis > 0 and want > 0 and got != want:
                raise InputError(field, f"has shape {list(array.shape)}; the model's input is {info.shape}")
        if array.shape[0] == 0:
            raise InputError(field, "is empty (N = 0)")
        if array.dtype != wanted:
            if not _castable(array, wanted):
                raise InputError(field, f"dtype {array.dtype} does not fit the model's {wanted}")
            array = array.astype(wanted)
        if wanted.kind == "f" and not np.isfinite(array).all():
            raise InputError(field, "contains NaN or infinite value(s)")
        out[name] = np.ascontiguousarray(array)
    sizes = {len(a) for a in out.values()}
    if len(sizes) > 1:
        raise InputError("inputs", f"inputs have different batch sizes {sorted(sizes)}; the first axis is the batch")
    return out


def _castable(array: np.ndarray, wanted: np.dtype) -> bool:
    """Numbers to a float input; integers, or floats that are whole (JSON), to an integer input."""
    if wanted.kind == "f":
        return array.dtype.kind in "fiu"
    if wanted.kind in "iu":
        return array.dtype.kind in "iu" or (array.dtype.kind == "f" and bool(np.all(np.mod(array, 1) == 0)))
    return False


def model_out(record: ModelRecord) -> ModelOut:
    return ModelOut(
        id=record.id,
        name=record.name,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        opset=record.opset,
        inputs=[TensorInfo.model_validate(i) for i in record.inputs],
        outputs=[TensorInfo.model_validate(o) for o in record.outputs],
        logits_output=record.logits_output,
        embedding_output=record.embedding_output,
        feature_outputs=record.feature_outputs,
        classes=record.classes,
        created_at=rfc3339(record.created_at),
        tags=record.tags,
    )

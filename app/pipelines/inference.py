"""The data plane: a pipeline version's composed export run on named tensors, by name (the latest
version) or name and version. Transport-free: the V2 REST edge (`app.api.v2_codec`, `app.api.routes.v2`)
decodes and encodes, and a second transport (gRPC) would call the same methods. What runs is the
export, in the model workers, so an answer and the export never disagree. Faults are domain errors:
`InputError` (unusable tensors), `NotFoundError` (no such pipeline or version), and the worker pool's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.errors import InputError
from app.datatypes import datatype, tensor_metadata
from app.models.runner import ModelRunner
from app.models.workers import ModelLimitError, ModelRunError, WorkerPool
from app.pipelines.service import PipelineService
from app.records import NotFoundError
from app.storage.models import PipelineRecord

MAX_VERSION = 2**31 - 1  # the pipelines table's integer column: a larger number names no version


@dataclass(frozen=True)
class Metadata:
    """A pipeline version and the versions it answers for: every version of its name (newest first) when
    asked by name, else its own."""

    record: PipelineRecord
    versions: list[int]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str | None = None  # why not


@dataclass(frozen=True)
class Inference:
    """The version that ran and its outputs by name, in the order asked."""

    record: PipelineRecord
    outputs: dict[str, np.ndarray]


class InferenceService:
    def __init__(self, pipelines: PipelineService, runner: ModelRunner, workers: WorkerPool) -> None:
        self.pipelines, self.runner, self.workers = pipelines, runner, workers

    def pipeline(self, name: str, version: int | None) -> PipelineRecord:
        if version is not None and version > MAX_VERSION:
            raise NotFoundError(f"no pipeline named {name!r} with version {version}")
        return self.pipelines.named(name, version)

    def metadata(self, name: str, version: int | None) -> Metadata:
        record = self.pipeline(name, version)
        versions = (
            [p.version for p in self.pipelines.page(500, None, name=name).items]
            if version is None
            else [record.version]
        )
        return Metadata(record, versions)

    def ready(self, name: str, version: int | None) -> Readiness:
        """Ready when a model worker holds the export's session or can load it (a worker caches it, so
        this costs a load once per worker)."""
        record = self.pipeline(name, version)
        path = self.pipelines.artifacts.path(record.sha256)
        if not path.is_file():
            return Readiness(False, "the export file is missing")
        try:
            self.workers.load(record.sha256, str(path))
        except (ModelRunError, ModelLimitError) as exc:
            return Readiness(False, f"the export does not load: {exc}")
        return Readiness(True)

    def infer(
        self, name: str, version: int | None, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> Inference:
        """The named outputs (all the pipeline's when None) for inputs of the pipeline's datatypes."""
        record = self.pipeline(name, version)
        checked = _checked_inputs(record, inputs)
        declared = [o["name"] for o in record.outputs]
        unknown = sorted(set(outputs or ()) - set(declared))
        if unknown:
            raise InputError("outputs", f"unknown output(s) {unknown}; the pipeline's outputs are {declared}")
        names = list(outputs or declared)
        computed = self.runner.run_validated(record, checked, names)
        return Inference(record, {n: computed[n] for n in names})


def _checked_inputs(record: PipelineRecord, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The pipeline's inputs by name, each with the declared datatype and trailing shape, one batch size."""
    expected = {i["name"]: i for i in record.inputs}
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise InputError("inputs", f"unknown input(s) {unknown}; the pipeline's inputs are {sorted(expected)}")
    missing = sorted(set(expected) - set(given))
    if missing:
        raise InputError("inputs", f"missing input(s) {missing}")
    for name, info in expected.items():
        array, want = given[name], tensor_metadata(info)
        field = f"inputs.{name}"
        if datatype(array.dtype) != want["datatype"]:
            raise InputError(field, f"is {datatype(array.dtype)}; the pipeline's input is {want['datatype']}")
        shape = want["shape"]
        fits = array.ndim == len(shape) and all(
            w < 0 or g == w for g, w in zip(array.shape[1:], shape[1:], strict=True)
        )
        if not fits:
            raise InputError(field, f"has shape {list(array.shape)}; the pipeline's input is {shape}")
        if array.shape[0] == 0:
            raise InputError(field, "is empty (batch 0)")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(field, "contains NaN or infinite value(s)")
    if len({a.shape[0] for a in given.values()}) > 1:
        raise InputError("inputs", f"inputs have different batch sizes {sorted({a.shape[0] for a in given.values()})}")
    return {
        name: np.ascontiguousarray(given[name].astype(given[name].dtype.newbyteorder("="), copy=False))
        for name in expected
    }

"""Running an uploaded model, and the one code path that turns "inputs for a model" into the tensors a
fitter reads: with a `model_id`, each split's `inputs.<name>` run through the model (in the worker pool,
chunk by chunk) and come back as that split's logits, embeddings or feature layers, so that calibrators,
detectors and SDM never know where their tensors came from."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, Protocol, Self

import numpy as np

from app.core import deadline
from app.core.chunking import Chunking
from app.core.errors import InputError
from app.core.fold import Arrays, Assembled, Chunk, InMemory, Source, fold
from app.models.schemas import TensorInfo
from app.models.workers import WorkerLimits, WorkerPool
from app.sources.source import FileSource
from app.storage.artifacts import ArtifactStore
from app.storage.models import ModelRecord
from app.storage.repository import ModelRepository
from app.stored import RecentReads
from app.tensors import ListTensor

INPUTS = "inputs."  # the prefix of a model input's field
Role = Literal["logits", "embedding", "features"]  # features: the feature outputs as layers, else the embedding


class Runnable(Protocol):
    """What runs in the workers: an uploaded model, or a pipeline's export (its file in the artifact store)."""

    @property
    def sha256(self) -> str: ...

    @property
    def inputs(self) -> list[dict[str, Any]]: ...

    @property
    def outputs(self) -> list[dict[str, Any]]: ...


class Classifier(Runnable, Protocol):
    """An uploaded model as Caliper reads its logits."""

    @property
    def logits_output(self) -> str: ...

    @property
    def binary(self) -> bool: ...


Caller = Callable[[Runnable, dict[str, np.ndarray], list[str], int], dict[str, np.ndarray]]  # ModelRunner.call


@dataclass(frozen=True)
class ModelFile:
    """An uploaded model as a Dask worker runs it: its file in the artifact store (which the workers see:
    the same machine, or a shared volume), its declared tensors, and the limits of the model processes
    the worker starts for it (uploaded models are untrusted code wherever they run)."""

    sha256: str
    path: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    logits_output: str
    binary: bool
    limits: WorkerLimits
    step: int  # rows per model call, as the server would run them

    def caller(self, workers: WorkerPool) -> Caller:
        """Calls of this model in `workers` (started by the Dask worker)."""
        return lambda record, chunk, names, rows: first_rows(workers.run(self.sha256, self.path, chunk, names), rows)


def first_rows(outputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A padded batch's outputs cut to its real rows."""
    return {k: v[:rows] for k, v in outputs.items()}


RECORD_TTL_S = 1.0  # how long another process's deletion of a model may go unseen here


class ModelRunner:
    def __init__(
        self,
        repository: ModelRepository,
        artifacts: ArtifactStore,
        workers: WorkerPool,
        chunking: Chunking,
        observe: Callable[[float, int], None] = lambda seconds, rows: None,
        recent: RecentReads[ModelRecord] | None = None,
    ) -> None:
        self.repository, self.artifacts, self.workers, self.chunking = repository, artifacts, workers, chunking
        self.observe = observe  # (seconds, rows) of each worker call, for the metrics
        self.recent = recent or RecentReads(RECORD_TTL_S)  # shared with ModelService, which forgets on delete

    def get(self, model_id: str) -> ModelRecord:
        """The model's record, read at most once per RECORD_TTL_S (a predict reads it on every call)."""
        return self.recent.get(model_id, lambda: self.repository.get(model_id))

    def outputs(self, record: ModelRecord, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """The named outputs for the model's inputs (validated here), run in chunks of at most
        CALIPER_MODEL_BATCH_ROWS rows and CALIPER_MODEL_BATCH_BYTES of inputs and declared outputs per call
        (a fixed batch dimension runs in batches of that size, the last padded), each chunk's outputs
        copied once, from shared memory into the result."""
        return self.run_validated(record, validated_inputs(record, arrays), names)

    def run_validated(self, record: Runnable, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """`outputs` for inputs that `validated_inputs` already returned, assembled in row order."""
        source = self.chunks(record, inputs, names)
        result: dict[str, np.ndarray] = fold(source, {"outputs": Assembled(lambda c: c.arrays, source.rows)})["outputs"]
        return result

    def chunks(
        self, record: Runnable, inputs: dict[str, np.ndarray], names: list[str], given: Arrays | None = None
    ) -> ModelChunks:
        """A fold source of the named outputs for validated inputs (and `given` row-aligned arrays)."""
        step = self.step(record, sum(int(v[0].nbytes) for v in inputs.values()), names)
        feed = InMemory({**{INPUTS + k: v for k, v in inputs.items()}, **(given or {})}, Chunking.blocks_of(step))
        return ModelChunks(self.call, record, feed, names)

    def source(self, record: ModelRecord, arrays: dict[str, np.ndarray], names: list[str]) -> ModelChunks:
        """The fold source of a request's arrays: its `inputs.<name>` run through the model (validated
        here), every other array given beside the outputs, row for row (422 naming one of another length)."""
        inputs = validated_inputs(
            record, {k.removeprefix(INPUTS): v for k, v in arrays.items() if k.startswith(INPUTS)}
        )
        given = {k: v for k, v in arrays.items() if not k.startswith(INPUTS)}
        rows = len(next(iter(inputs.values())))
        for name, value in given.items():
            if len(value) != rows:
                raise InputError(name, f"has {len(value)} rows; the model's inputs have {rows}")
        return self.chunks(record, inputs, names, given)

    def file_source(self, record: ModelRecord, feed: FileSource, names: list[str]) -> ModelChunks:
        """The fold source of a request whose `inputs.<name>` (some or all) are read from files: `feed`'s
        columns and inline arrays, its other fields given beside the outputs. The first row of the inputs
        is validated before any work (names, dtypes, shapes: 422 naming the input), every chunk's as it is
        read (finite values)."""
        first = feed.window(0, 1)
        first_row = {
            k.removeprefix(INPUTS): v for k, v in {**first.read(), **first.inline}.items() if k.startswith(INPUTS)
        }
        validated_inputs(record, first_row)
        row_bytes = sum(feed.columns[k].row_bytes for k in feed.columns if k.startswith(INPUTS))
        row_bytes += sum(int(v[0].nbytes) for k, v in feed.inline.items() if k.startswith(INPUTS))
        step = self.step(record, row_bytes, names)
        feed = replace(feed, chunking=Chunking.blocks_of(step))
        return ModelChunks(self.call, record, feed, names, partial(validated_inputs, record))

    def model_file(self, record: ModelRecord, step: int) -> ModelFile:
        """What a Dask worker needs to run the model in calls of `step` rows."""
        path = str(self.artifacts.path(record.sha256))
        limits = self.workers.limits
        return ModelFile(record.sha256, path, record.inputs, record.outputs, record.logits_output, record.binary,
                         limits, step)  # fmt: skip

    def call(
        self, record: Runnable, chunk: dict[str, np.ndarray], names: list[str], rows: int
    ) -> dict[str, np.ndarray]:
        """One worker call on a chunk (padded to a fixed batch); the named outputs of its first `rows` rows."""
        started = time.perf_counter()
        out = self.workers.run(record.sha256, str(self.artifacts.path(record.sha256)), chunk, names)
        self.observe(time.perf_counter() - started, rows)
        if isinstance(record, ModelRecord) and record.logits_output in out:
            self.learn_classes(record, out[record.logits_output].shape[-1])
        return first_rows(out, rows)

    def learn_classes(self, record: ModelRecord, classes: int) -> None:
        """A model whose class dimension is symbolic gets C from its first run's logits."""
        if record.classes is None and classes >= 2:
            self.repository.learn_classes(record.id, classes)
            record.classes = classes  # the kept record too (RecentReads): asked once per process

    def step(self, record: Runnable, input_bytes: int, names: list[str]) -> int:
        """Rows per model call for inputs of `input_bytes` a row and these outputs (a fixed batch dimension
        decides alone)."""
        return fixed_batch(record) or self.chunking.step(input_bytes + self._output_bytes(record, names))

    @staticmethod
    def _output_bytes(record: Runnable, names: list[str]) -> int:
        """Bytes per row of the named outputs (a dynamic output width counts as 1)."""
        declared = {o["name"]: o for o in record.outputs}
        out = 0
        for name in names:
            info = declared[name]
            out += np.dtype(info["dtype"]).itemsize * int(np.prod([max(d, 1) for d in info["shape"][1:]]))
        return out

    def resolve(
        self, model_id: str | None, arrays: dict[str, np.ndarray], fields: dict[str, Role], splits: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """`arrays` as given without a model; with one, each split (a dotted prefix: "", "validation.",
        "support.", …) that has `{split}inputs.<name>` gets `{split}{field}` computed for every field, in
        one run of the model per split. Giving both a field and inputs for it is refused."""
        if model_id is None:
            stray = next((k for k in arrays if any(k.startswith(f"{s}inputs.") for s in splits)), None)
            if stray is not None:
                raise InputError(stray, "inputs are for a model: give `model_id` with them")
            return arrays
        record = self.get(model_id)
        out = dict(arrays)
        for split in splits:
            prefix = f"{split}inputs."
            inputs = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
            if not inputs:
                continue
            for key in inputs:
                del out[prefix + key]
            names = {field: self._outputs_for(record, role, f"{split}{field}") for field, role in fields.items()}
            wanted = list(dict.fromkeys(n for group in names.values() for n in group.values()))
            computed = self.outputs(record, inputs, wanted)
            for field, group in names.items():
                for target, output in group.items():
                    given = next((k for k in arrays if k == target or k.startswith(f"{split}{field}.")), None)
                    if given is not None:
                        raise InputError(given, f"give `{split}inputs` for model {model_id} or `{given}`, not both")
                    value = computed[output]
                    out[target] = read_logits(record, value) if fields[field] == "logits" else value
        return out

    @staticmethod
    def _outputs_for(record: ModelRecord, role: Role, target: str) -> dict[str, str]:
        """{array name the fitter reads: model output} for one field."""
        if role == "logits":
            return {target: record.logits_output}
        if role == "features" and record.feature_outputs:
            return {f"{target}.{name}": name for name in record.feature_outputs}
        if record.embedding_output is None:
            raise InputError(target, f"model {record.id} was uploaded without an `embedding_output`")
        return {target: record.embedding_output}


class Feed(Source, Protocol):
    """Chunks of a model's inputs (as `inputs.<name>`) and of row-aligned arrays given beside them."""

    def beside(self, arrays: Arrays) -> Self:
        """The same rows with more arrays given beside them."""
        ...


@dataclass(frozen=True)
class ModelChunks:
    """A fold source: a model's named outputs, one worker call per chunk of `feed` (chunks of at most
    CALIPER_MODEL_BATCH_ROWS rows and CALIPER_MODEL_BATCH_BYTES of inputs and declared outputs; a fixed
    batch dimension runs in batches of that size, the last padded), with the feed's other arrays beside
    them. `check`: validate each chunk's inputs as it is read (files; inline inputs are validated once)."""

    call: Caller
    record: Runnable
    feed: Feed
    names: list[str]
    check: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None

    @property
    def rows(self) -> int:
        return self.feed.rows

    def beside(self, arrays: Arrays) -> ModelChunks:
        """The same outputs with more row-aligned arrays given beside them (e.g. a slice's slots)."""
        return replace(self, feed=self.feed.beside(arrays))

    def chunks(self) -> Iterator[Chunk]:
        fixed = fixed_batch(self.record)
        for chunk in self.feed.chunks():
            deadline.check()
            inputs = {k.removeprefix(INPUTS): v for k, v in chunk.arrays.items() if k.startswith(INPUTS)}
            given = {k: v for k, v in chunk.arrays.items() if not k.startswith(INPUTS)}
            if self.check is not None:
                inputs = self.check(inputs)
            rows = chunk.stop - chunk.start
            if fixed and rows < fixed:
                inputs = {k: np.concatenate([v, np.repeat(v[-1:], fixed - rows, axis=0)]) for k, v in inputs.items()}
            out = self.call(self.record, inputs, self.names, rows)
            yield Chunk(chunk.start, chunk.stop, out | given)


def fixed_batch(record: Runnable) -> int | None:
    """The batch size a model's inputs fix, if any."""
    fixed = {i["shape"][0] for i in record.inputs if i["shape"] and i["shape"][0] > 0}
    return next(iter(fixed)) if fixed else None


def validated_inputs(record: Runnable, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
            if not isinstance(array, ListTensor) and _kind(array.dtype) != _kind(wanted):
                raise InputError(
                    field, f"is a {array.dtype} tensor; the model's input is {wanted} (send {wanted}, or a JSON list)"
                )
            array = array.astype(wanted)
        if wanted.kind == "f" and not _finite(array):
            raise InputError(field, "contains NaN or infinite value(s)")
        out[name] = np.ascontiguousarray(array)
    sizes = {len(a) for a in out.values()}
    if len(sizes) > 1:
        raise InputError("inputs", f"inputs have different batch sizes {sorted(sizes)}; the first axis is the batch")
    return out


def _finite(array: np.ndarray, rows: int = 65_536) -> bool:
    """All values finite, checked in row blocks (the flag array of a whole 1M × 64 input would be 64 MB)."""
    return all(bool(np.isfinite(array[start : start + rows]).all()) for start in range(0, len(array), rows))


def _kind(dtype: np.dtype) -> str:
    """Floating point or integer: a typed tensor is cast within its kind only (float64 to a float32 input)."""
    return "f" if dtype.kind == "f" else "i"


def _castable(array: np.ndarray, wanted: np.dtype) -> bool:
    """Numbers to a float input; integers, or floats that are whole (JSON), to an integer input."""
    if wanted.kind == "f":
        return array.dtype.kind in "fiu"
    if wanted.kind in "iu":
        return array.dtype.kind in "iu" or (array.dtype.kind == "f" and bool(np.all(np.mod(array, 1) == 0)))
    return False


def read_logits(record: Classifier, logits: np.ndarray) -> np.ndarray:
    """A model's logits output as Caliper reads it: as given, or a binary model's [N] log-odds (its [N]
    output, or [N, 1] squeezed; api.md)."""
    if not record.binary:
        return logits
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.ndim != 1:
        raise InputError("logits_output", f"the binary model gave logits {list(logits.shape)}; expected [N] or [N, 1]")
    return logits

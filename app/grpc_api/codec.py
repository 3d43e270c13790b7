"""The V2 gRPC wire (Open Inference Protocol) decoded into named arrays for the data plane
(`app.pipelines.inference`) and its answers encoded back: the gRPC twin of `app.api.v2_codec`.

- An input's values are either `raw_input_contents` (one entry per input, in order, for all inputs or
  none; little-endian, row-major; read zero-copy with `np.frombuffer`) or the typed field of
  `contents` that its datatype names (FP16 only raw, as the protocol has no FP16 field). Sizes are
  checked against shape × itemsize, integer values against their datatype's range.
- Outputs are always answered in `raw_output_contents`, one per output in order, as Triton does and
  tritonclient reads.
- Datatypes must equal the pipeline's (the data plane refuses a mismatch); BYTES tensors and
  classification outputs are refused.
Faults are `ProtocolError`s (INVALID_ARGUMENT)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.api.v2_codec import ProtocolError, metadata_body, parse_version, tensor_dtype
from app.datatypes import V2_NAMES
from app.grpc_api import open_inference_pb2 as pb
from app.pipelines.inference import Inference, Metadata

CONTENTS = {  # the protocol's typed field of each datatype (the narrow integers ride in 32-bit fields)
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
FIELDS = sorted(set(CONTENTS.values()) | {"bytes_contents"})


@dataclass(frozen=True)
class Decoded:
    name: str
    version: int | None
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output of the pipeline


def version_of(text: str) -> int | None:
    """The protocol's model_version: empty for the latest, else a positive integer."""
    return parse_version(text) if text else None


def decode(request: Any) -> Decoded:
    """A ModelInferRequest's inputs as arrays, checked against their shapes and datatypes."""
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one per input, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for k, given in enumerate(request.inputs):
        if given.name in inputs:
            raise ProtocolError(f"input {given.name!r} is given twice")
        inputs[given.name] = _tensor(given, raw[k] if raw else None)
    outputs = []
    for wanted in request.outputs:
        if "classification" in wanted.parameters:
            raise ProtocolError(f"output {wanted.name!r}: classification outputs are not supported")
        outputs.append(wanted.name)
    return Decoded(request.model_name, version_of(request.model_version), request.id, inputs, outputs or None)


def _tensor(given: Any, raw: bytes | None) -> np.ndarray:
    where = f"input {given.name!r}"
    shape = list(given.shape)
    dtype = tensor_dtype(where, given.datatype, shape)
    count = math.prod(shape)
    filled = [f for f in FIELDS if len(getattr(given.contents, f))]
    if raw is not None:
        if filled:
            raise ProtocolError(f"{where}: give raw_input_contents or contents, not both")
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(
                f"{where}: raw_input_contents has {len(raw)} bytes; {count} elements × {dtype.itemsize} bytes of "
                f"shape {shape} need {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)
    field = CONTENTS.get(given.datatype)
    if field is None:
        raise ProtocolError(f"{where}: {given.datatype} has no typed contents field; send raw_input_contents")
    if filled not in ([], [field]):
        raise ProtocolError(f"{where}: a {given.datatype} tensor's values go in contents.{field}, not {filled}")
    values = getattr(given.contents, field)
    if len(values) != count:
        raise ProtocolError(f"{where}: contents.{field} has {len(values)} values; shape {shape} needs {count}")
    return _narrowed(np.asarray(values), dtype, where).reshape(shape)


def _narrowed(values: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """Values of a 32-bit field as the datatype, refusing what it cannot hold."""
    if dtype.kind in "iu" and values.size:
        bounds = np.iinfo(dtype)
        if values.min() < bounds.min or values.max() > bounds.max:
            raise ProtocolError(f"{where}: a value is outside {V2_NAMES[dtype.name]}'s range")
    return values.astype(dtype, copy=False)


def encode(inference: Inference, request_id: str) -> Any:
    """A ModelInferResponse: each output's description, its bytes in raw_output_contents."""
    record = inference.record
    response = pb.ModelInferResponse(model_name=record.name, model_version=str(record.version), id=request_id)
    for name, array in inference.outputs.items():
        response.outputs.add(name=name, datatype=V2_NAMES[array.dtype.name], shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response


def metadata_message(metadata: Metadata) -> Any:
    """The protocol's ModelMetadataResponse of a pipeline version (what /v2/models/{name} answers)."""
    body = metadata_body(metadata)
    response = pb.ModelMetadataResponse(name=body["name"], versions=body["versions"], platform=body["platform"])
    for kind in ("inputs", "outputs"):
        for tensor in body[kind]:
            getattr(response, kind).add(**tensor)
    return response

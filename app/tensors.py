"""Tensor wire formats of api.md: nested JSON lists, base64 tensor objects and .npy bytes.

Decoding copies nothing it does not have to (base64 is decoded slice by slice into the array's buffer;
.npy parts are viewed in place) and never unpickles (.npy is read with allow_pickle=False, and object
arrays are refused).
"""

from __future__ import annotations

import binascii
import io
import math
from typing import Any, Literal

import numpy as np
from caliper_client.wire import WIRE_DTYPES
from numpy.lib import format as npy_format
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from app.core.errors import InputError
from app.core.npy_headers import NPY_HEADERS

MAX_DIMS = 4
MAX_DIMENSION = 2**31 - 1  # numpy refuses shapes whose product of dimensions overflows, even with a zero among them
MAX_NPY_HEADER = 1 << 16


def shape_fault(shape: list[int] | tuple[int, ...]) -> str | None:
    """Why a declared shape cannot be an array (a negative or oversized dimension), or None."""
    if any(d < 0 for d in shape):
        return f"shape {list(shape)} has a negative dimension"
    if any(d > MAX_DIMENSION for d in shape):
        return f"shape {list(shape)} has a dimension over {MAX_DIMENSION}"
    return None


class TensorObject(BaseModel):
    """A tensor as little-endian bytes: `{"dtype", "shape", "data_b64"}`."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "float64", "int32", "int64"]
    shape: list[int] = Field(max_length=MAX_DIMS)
    data_b64: str


def _one_of(schema: dict[str, Any]) -> None:
    """A nested list and a tensor object never overlap: `oneOf`, as generated clients expect."""
    schema["oneOf"] = schema.pop("anyOf")


class Tensor(RootModel[list[Any] | TensorObject]):
    """A tensor: a row-major nested list of numbers (read as float64; integers for label fields), or a
    tensor object with base64 little-endian bytes."""

    # Fields of this type are decoded by the tensor readers (`decode_json_tensor`, `.npy` parts) before a
    # body's model is validated: the type documents them, as one schema that every field references.
    model_config = ConfigDict(json_schema_extra=_one_of)


Layers = dict[str, Tensor]  # named tensors, e.g. a feature ensemble's layers or a model's inputs


def source_field(fields: tuple[str, ...], how: str) -> Any:
    """The `source` of a request whose tensor `fields` may name files instead of travelling in the body
    (api.md, "Jobs, data sources and scale-out"); `how` says how the request reads them."""
    return Field(
        None,
        description="Tensor fields read from files instead of the body: {field: path, glob or URL} of `.npy` "
        "files or Parquet files (the column named as the field's last part; [N, C] as a fixed-size list column or "
        "as columns `<name>.0` … `<name>.<C-1>`); a glob's matches are shards read in sorted order. Fields: "
        + ", ".join(fields)
        + ". Local paths must be absolute and under CALIPER_DATA_ROOTS, URLs (s3://, gs://, https://, … through "
        "fsspec, with the server's credentials) under a prefix of CALIPER_DATA_URLS; else 422. " + how,
        json_schema_extra={"propertyNames": _names_schema(fields)},
    )


def _names_schema(fields: tuple[str, ...]) -> dict[str, Any]:
    """JSON Schema of the field names: the exact ones, and `prefix.<name>` for a `prefix.*`."""
    exact = [f for f in fields if not f.endswith(".*")]
    patterns = [{"pattern": "^" + f.removesuffix("*").replace(".", r"\.") + ".+$"} for f in fields if f.endswith(".*")]
    return {"anyOf": [{"enum": exact}, *patterns]} if patterns else {"enum": exact}


def _known(name: str, fields: tuple[str, ...]) -> bool:
    return name in fields or any(
        f.endswith(".*") and name.startswith(f[:-1]) and len(name) > len(f) - 1 for f in fields
    )


def known_source(fields: tuple[str, ...]) -> Any:
    """The validator of a `source_field`: a field not in `fields` (`prefix.*`: any `prefix.<name>`) is
    refused; an empty source is none."""

    def check(source: dict[str, str] | None) -> dict[str, str] | None:
        unknown = sorted(name for name in source or {} if not _known(name, fields))
        if unknown:
            raise ValueError(f"{unknown[0]!r} cannot be read from files; fields: {', '.join(fields)}")
        return source or None

    return field_validator("source")(check)


MODEL_INPUTS_NOTE = (
    "A nested list is cast to the input's dtype (whole numbers only for an integer input); a typed tensor "
    "(tensor object or .npy part) keeps its kind: float64 is cast to a float32 input and int32 to int64, "
    "but an integer tensor for a float input (or a float tensor for an integer one) is a 422 naming the input."
)
NULL_NOTE = (
    "null where a value is not finite (it overflowed its dtype, e.g. for inputs far beyond the fit data's scale)"
)


class ListTensor(np.ndarray):
    """An array decoded from a nested JSON list. Its dtype is the wire's (float64, or integers for label
    fields), not one the client chose, so a model input may cast it to the input's dtype; a typed tensor
    (a tensor object or .npy) keeps its kind."""


def decode_json_tensor(field: str, value: Any, integer: bool = False) -> np.ndarray:
    """A JSON tensor field -> ndarray; nested lists must be rectangular and numeric."""
    if isinstance(value, dict):
        try:
            obj = TensorObject.model_validate(value)
        except ValueError as exc:
            raise InputError(field, f"is not a valid tensor object: {exc}") from exc
        return _from_b64(field, obj)
    if not isinstance(value, list):
        raise InputError(field, "must be a nested list of numbers or a tensor object")
    try:
        # Label fields keep what JSON gave (ints, or floats that validation checks for integrality).
        array = np.array(value) if integer else np.array(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(field, "must be a rectangular (not ragged) list of numbers") from exc
    if array.dtype.kind not in "iuf" and array.size:
        raise InputError(field, "must be a rectangular (not ragged) list of numbers")
    return array.view(ListTensor)


B64_SLICE = 4 << 20  # characters of base64 decoded at a time (a multiple of 4)


def _from_b64(field: str, obj: TensorObject) -> np.ndarray:
    """Decode into one preallocated buffer, slice by slice: `b64decode` of a whole str first copies it
    to ASCII bytes (at 4M × 4 float32 the request's peak was 2.10x the body with it, 2.01x without;
    bench/memory.py)."""
    fault = shape_fault(obj.shape)
    if fault is not None:
        raise InputError(field, fault)
    dtype = np.dtype(WIRE_DTYPES[obj.dtype])
    expected = math.prod(obj.shape) * dtype.itemsize  # Python integers: no int64 wrap-around
    text = obj.data_b64
    padding = len(text) - len(text.rstrip("="))
    held = len(text) // 4 * 3 - padding if len(text) % 4 == 0 and padding <= 2 else -1
    if held < 0:
        raise InputError(field, "data_b64 is not valid base64")
    if held != expected:
        raise InputError(field, f"data_b64 holds {held} bytes; shape {obj.shape} of {obj.dtype} needs {expected}")
    out = np.empty(expected, np.uint8)
    position = 0
    try:
        for start in range(0, len(text), B64_SLICE):
            piece = binascii.a2b_base64(text[start : start + B64_SLICE], strict_mode=True)
            out[position : position + len(piece)] = np.frombuffer(piece, np.uint8)
            position += len(piece)
    except (binascii.Error, ValueError) as exc:
        raise InputError(field, "data_b64 is not valid base64") from exc
    return out.view(dtype).reshape(obj.shape)


def decode_npy(field: str, data: bytes | memoryview) -> np.ndarray:
    """.npy bytes -> ndarray viewing `data` (no copy when aligned); no pickles, no object arrays."""
    view = memoryview(data)
    header = io.BytesIO(view[:MAX_NPY_HEADER].tobytes())
    try:
        version = npy_format.read_magic(header)
        with NPY_HEADERS:
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(header)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(header)
            else:
                raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy reads the header dict with ast and tokenize, which raise their own errors
        raise InputError(field, f"is not a valid .npy file ({str(exc)[:200]})") from exc
    if dtype.hasobject or dtype.kind not in "fiub" or len(shape) > MAX_DIMS:
        raise InputError(field, f"must be a numeric .npy array of at most {MAX_DIMS} dimensions, got {dtype}")
    fault = shape_fault(shape)
    if fault is not None:
        raise InputError(field, fault)
    count = math.prod(shape)  # Python integers, checked against the bytes before any allocation
    offset = header.tell()
    if len(view) - offset != count * dtype.itemsize:
        raise InputError(
            field, f".npy data holds {len(view) - offset} bytes; shape {list(shape)} needs {count * dtype.itemsize}"
        )
    array = np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.require(array, requirements=["C", "A"])

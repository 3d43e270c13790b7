"""Tensor encodings of api.md that a client sends: base64 tensor objects in JSON and `.npy` parts."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

WIRE_DTYPES = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8"}
_NAMES = {"f4": "float32", "f8": "float64", "i4": "int32", "i8": "int64"}


def encode_tensor_object(array: np.ndarray) -> dict[str, Any]:
    """ndarray (float32/64, int32/64) -> `{"dtype", "shape", "data_b64"}` with little-endian bytes."""
    name = _NAMES[array.dtype.str[1:]]
    data = np.ascontiguousarray(array, dtype=np.dtype(WIRE_DTYPES[name]))
    return {"dtype": name, "shape": list(array.shape), "data_b64": base64.b64encode(data.tobytes()).decode()}


def encode_npy(array: np.ndarray) -> bytes:
    """ndarray -> `.npy` bytes (never pickled: object arrays raise)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def to_wire(array: np.ndarray) -> np.ndarray:
    """Arrays in a dtype the API accepts: floats stay float32/float64, integers become int64."""
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    if array.dtype in (np.float32, np.float64):
        return array
    return array.astype(np.float64)

"""The tensor datatypes of the Open Inference Protocol (KServe V2, REST and gRPC alike): the names a
pipeline's signature is described in, whichever transport carries it."""

from __future__ import annotations

from typing import Any

import numpy as np

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
V2_NAMES = {dtype.name: name for name, dtype in DATATYPES.items()}


def datatype(dtype: np.dtype) -> str:
    """The protocol's name of a numpy dtype (FP32 for float32; numpy's own name where it has none)."""
    name = np.dtype(dtype).name
    return V2_NAMES.get(name, name)


def tensor_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """A stored tensor description (name, numpy dtype, shape) in the protocol's terms."""
    return {"name": info["name"], "datatype": datatype(np.dtype(info["dtype"])), "shape": info["shape"]}

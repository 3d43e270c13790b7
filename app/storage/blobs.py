"""Arrays as compressed .npy bytes; loading never unpickles."""

from __future__ import annotations

import io
import zlib

import numpy as np


def encode_array(array: np.ndarray, level: int = 1) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getbuffer(), level)


def decode_array(blob: bytes) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)
    return array

"""Arrays as zstd-compressed .npy bytes (zstd level 1: ~0.5 GB/s, ~17x faster than zlib on float
rows); loading never unpickles."""

from __future__ import annotations

import io

import numpy as np
import zstandard

_COMPRESSOR = zstandard.ZstdCompressor(level=1)


def encode_array(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return _COMPRESSOR.compress(buffer.getbuffer())


def decode_array(blob: bytes) -> np.ndarray:
    raw = zstandard.ZstdDecompressor().decompress(blob)
    array: np.ndarray = np.load(io.BytesIO(raw), allow_pickle=False)
    return array


def compact_indices(array: np.ndarray, upper: int) -> np.ndarray:
    """Class indices in [0, upper) in the smallest unsigned dtype that holds them."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if upper <= np.iinfo(dtype).max + 1:
            return array.astype(dtype, copy=False)
    return array.astype(np.int64, copy=False)


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Several named arrays as one zstd-compressed .npz."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return _COMPRESSOR.compress(buffer.getbuffer())


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(blob)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}

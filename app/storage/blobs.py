"""Arrays as zstd-compressed .npy bytes with a SHA-256 of the uncompressed bytes in front, verified on
every read; loading never unpickles.

Layout: b"CLB1" + sha256(npy bytes) + zstd frame (level 1: ~0.5 GB/s, ~17x faster than zlib on float
rows). The digest is taken before compression and checked after decompression, so a blob that decodes
to another array (a compressor used from two threads did exactly that) is caught, not just a damaged
frame. Blobs written before the digest (a bare zstd frame) still decode, unchecked.

python-zstandard (de)compressors are not thread-safe: each thread keeps its own (18.7 µs per 8 KB
array against 31 µs for a compressor built per call, measured on one machine in one run).
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile

import numpy as np
import zstandard

from app.core.npy_headers import NPY_HEADERS

MAGIC = b"CLB1"
_DIGEST = 32
_LEGACY_MAGIC = b"\x28\xb5\x2f\xfd"  # a bare zstd frame
_local = threading.local()


class CorruptBlobError(Exception):
    """A stored blob that does not decode to what was stored: a server fault, never user input."""

    def __init__(self, owner: str, reason: str) -> None:
        super().__init__(f"stored arrays of {owner} are corrupt ({reason})")
        self.owner = owner


def _compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=1)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def _seal(raw: memoryview | bytes) -> bytes:
    return MAGIC + hashlib.sha256(raw).digest() + _compressor().compress(raw)


def _open(blob: bytes, owner: str) -> bytes:
    """The verified uncompressed bytes of a blob (the blob itself is read in place, not copied)."""
    view = memoryview(blob)
    head = bytes(view[: len(MAGIC)])
    try:
        if head == MAGIC:
            digest, frame = bytes(view[len(MAGIC) : len(MAGIC) + _DIGEST]), view[len(MAGIC) + _DIGEST :]
            raw: bytes = _decompressor().decompress(frame)
            if hashlib.sha256(raw).digest() != digest:
                raise CorruptBlobError(owner, "digest mismatch")
            return raw
        if head == _LEGACY_MAGIC:
            legacy: bytes = _decompressor().decompress(view)
            return legacy
    except zstandard.ZstdError as exc:
        raise CorruptBlobError(owner, f"zstd: {exc}") from exc
    raise CorruptBlobError(owner, "unknown blob header")


def encode_array(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return _seal(buffer.getbuffer())


def decode_array(blob: bytes, owner: str) -> np.ndarray:
    try:
        raw = io.BytesIO(_open(blob, owner))
        with NPY_HEADERS:
            array: np.ndarray = np.load(raw, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptBlobError(owner, f"npy: {exc}") from exc
    return array


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Several named arrays as one sealed .npz."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return _seal(buffer.getbuffer())


def decode_arrays(blob: bytes, owner: str) -> dict[str, np.ndarray]:
    try:
        raw = io.BytesIO(_open(blob, owner))
        with NPY_HEADERS, np.load(raw, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CorruptBlobError(owner, f"npz: {exc}") from exc

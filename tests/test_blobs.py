"""Blob coding is thread-safe, and every stored blob is verified on read: a damaged or swapped blob is a
server fault naming its record, never decoded into wrong numbers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zstandard
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.storage.blobs import CorruptBlobError, decode_array, decode_arrays, encode_array, encode_arrays
from app.storage.models import EvaluationArray
from tests.conftest import Y_A, Z_A


def test_sixteen_threads_encode_and_decode_their_own_arrays() -> None:
    """The shared compressor of old crashed (rc 139) or returned another thread's bytes within seconds."""
    start = threading.Barrier(16)

    def work(seed: int) -> int:
        rng = np.random.default_rng(seed)
        start.wait()
        for _ in range(150):
            array = rng.normal(size=int(rng.integers(1, 5000)))
            named = {"a": array, "b": array[::-1].copy()}
            assert np.array_equal(decode_array(encode_array(array), "t"), array)
            back = decode_arrays(encode_arrays(named), "t")
            assert np.array_equal(back["a"], array) and np.array_equal(back["b"], named["b"])
        return seed

    with ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(work, range(16))) == list(range(16))


def _frame(blob: bytes) -> bytes:
    return blob[4 + 32 :]


def test_a_damaged_or_swapped_blob_is_refused() -> None:
    one, other = encode_array(np.arange(100.0)), encode_array(np.arange(100.0) + 1)
    flipped = bytearray(one)
    flipped[-5] ^= 0xFF
    with pytest.raises(CorruptBlobError, match="evaluation e1"):
        decode_array(bytes(flipped), "evaluation e1")
    swapped = one[: 4 + 32] + _frame(other)  # a valid frame holding another array: only the digest sees it
    with pytest.raises(CorruptBlobError, match="digest mismatch"):
        decode_array(swapped, "x")
    with pytest.raises(CorruptBlobError, match="unknown blob header"):
        decode_arrays(b"not a blob", "x")


def test_blobs_written_before_the_digest_still_decode() -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.arange(5), allow_pickle=False)
    legacy = zstandard.ZstdCompressor(level=1).compress(buffer.getvalue())
    assert np.array_equal(decode_array(legacy, "x"), np.arange(5))


def test_a_corrupt_stored_blob_answers_a_server_fault_naming_the_record(client: TestClient) -> None:
    created = client.post("/v1/evaluations", json={"logits": Z_A.tolist(), "labels": Y_A.tolist()}).json()
    sessions = client.app.state.resources.database  # type: ignore[attr-defined]
    with sessions.begin() as session:
        owned = EvaluationArray.evaluation_id == created["id"]
        row = session.scalars(select(EvaluationArray).where(owned, EvaluationArray.name.startswith("loss."))).first()
        row.data = row.data[: 4 + 32] + _frame(encode_array(np.zeros(3)))
    response = client.get(f"/v1/evaluations/{created['id']}", params={"per_sample": "true"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert created["id"] in response.json()["detail"] and "corrupt" in response.json()["detail"]

"""Streamed .npz answers read back as what `np.savez` would have written, in bounded pieces."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.api.npz_stream import npz_chunks

DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.uint8])


def read(chunks: list[bytes]) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(b"".join(chunks)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@settings(max_examples=60, deadline=None)
@given(
    columns=st.dictionaries(
        st.text("abcxyz._", min_size=1, max_size=8),
        hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)),
        max_size=4,
    ),
    slice_bytes=st.integers(1, 200),
)
def test_streamed_archives_hold_the_arrays(columns: dict[str, np.ndarray], slice_bytes: int) -> None:
    got = read(list(npz_chunks(columns, slice_bytes)))
    assert list(got) == list(columns)
    for name, array in columns.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


def test_pieces_stay_near_the_slice_size_and_fortran_arrays_are_written_in_c_order() -> None:
    wide = np.asfortranarray(np.arange(200_000 * 10, dtype=np.float32).reshape(200_000, 10))
    chunks = list(npz_chunks({"logits": wide, "prediction": np.arange(200_000)}, slice_bytes=1 << 20))
    assert len(chunks) > 8 and max(len(c) for c in chunks) < (1 << 20) + 4096
    got = read(chunks)
    np.testing.assert_array_equal(got["logits"], wide)
    np.testing.assert_array_equal(got["prediction"], np.arange(200_000))


def test_object_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="object"):
        list(npz_chunks({"bad": np.array([{"a": 1}], dtype=object)}))

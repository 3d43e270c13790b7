"""Multi-label truth as CSR label sets (api.md): `indices` [nnz] and `offsets` [N + 1], row i's labels at
indices[offsets[i]:offsets[i + 1]]. Wide rows (100k–1M labels) never travel as a dense multi-hot: a chunk
of rows takes its slice of the CSR, and the graph scatters it into that chunk's rows alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from app.core.errors import InputError
from app.core.fold import Chunk, InMemory

FIELD = "label_sets"


@dataclass(frozen=True)
class LabelSets:
    """Validated CSR label sets: int64 indices and offsets."""

    indices: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of_lists(cls, rows: Sequence[Sequence[int]]) -> LabelSets:
        """The JSON form: one list of label indices per row."""
        sizes = np.fromiter((len(row) for row in rows), np.int64, len(rows))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        indices = np.fromiter((label for row in rows for label in row), np.int64, int(offsets[-1]))
        return cls(indices, offsets)

    @classmethod
    def checked(cls, indices: np.ndarray, offsets: np.ndarray, rows: int, classes: int) -> LabelSets:
        """The multipart form, checked against N rows of C labels: integer arrays, offsets from 0,
        non-decreasing, ending at nnz; indices in [0, C); no label twice in a row (refused, not merged:
        a duplicate is a bug upstream that deduplicating would hide). Unsorted rows are accepted."""
        for name, values in (("indices", indices), ("offsets", offsets)):
            if values.ndim != 1 or values.dtype.kind not in "iu":
                raise InputError(
                    f"{FIELD}.{name}", f"must be a 1-D integer array, got {values.dtype} {list(values.shape)}"
                )
        indices, offsets = indices.astype(np.int64, copy=False), offsets.astype(np.int64, copy=False)
        if len(offsets) != rows + 1:
            raise InputError(f"{FIELD}.offsets", f"has {len(offsets)} entries: expected N + 1 = {rows + 1}")
        if offsets[0] != 0 or offsets[-1] != len(indices):
            raise InputError(
                f"{FIELD}.offsets",
                f"must start at 0 and end at nnz = {len(indices)} (got {offsets[0]} … {offsets[-1]})",
            )
        sizes = np.diff(offsets)
        if (sizes < 0).any():
            raise InputError(f"{FIELD}.offsets", f"must not decrease (row {int(np.argmax(sizes < 0))})")
        if indices.size and (indices.min() < 0 or indices.max() >= classes):
            bad = int(indices[(indices < 0) | (indices >= classes)][0])
            raise InputError(f"{FIELD}.indices", f"label {bad} is outside [0, {classes}) for C = {classes} labels")
        keys = np.repeat(np.arange(rows, dtype=np.int64), sizes) * classes + indices
        if np.unique(keys).size != keys.size:
            keys.sort()
            twice = int(keys[np.flatnonzero(np.diff(keys) == 0)[0]])
            raise InputError(FIELD, f"row {twice // classes} lists label {twice % classes} twice")
        return cls(indices, offsets)

    @property
    def sizes(self) -> np.ndarray:
        """|P_i| per row."""
        return np.diff(self.offsets)

    def between(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as CSR of their own: (indices, offsets from 0)."""
        offsets = self.offsets[start : stop + 1]
        return self.indices[int(offsets[0]) : int(offsets[-1])], offsets - offsets[0]

    def rows_of(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) as the graph's inputs: each positive's row within the chunk, and its label."""
        begin, end = int(self.offsets[start]), int(self.offsets[stop])
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(self.offsets[start : stop + 1]))
        return {"label_rows": rows, "label_indices": self.indices[begin:end]}


def multi_hot(targets: np.ndarray) -> np.ndarray:
    """Dense multilabel `targets` [N, C], checked to hold only 0 and 1."""
    if not np.isin(targets, (0, 1)).all():
        raise InputError("targets", "multilabel targets must be multi-hot: every value 0 or 1")
    return targets


@dataclass(frozen=True)
class RowsWithExtras:
    """In-memory rows with, beside each chunk, its slice of the label sets (when the truth is CSR) and the
    constants every chunk is fed (`label_frequencies` and `n_train`, `bag_targets`)."""

    rows_source: InMemory
    sets: LabelSets | None
    constants: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        return self.rows_source.rows

    def chunks(self) -> Iterator[Chunk]:
        for chunk in self.rows_source.chunks():
            sets = {} if self.sets is None else self.sets.rows_of(chunk.start, chunk.stop)
            yield Chunk(chunk.start, chunk.stop, {**chunk.arrays, **sets, **self.constants})

"""Tensor fields read from files, as one more chunk source of the fold (`app.core.fold.Source`): every
field's column read in step, `chunking` rows at a time, with the request's in-memory columns (inline
tensors, slice slots) sliced alongside."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from app.core.chunking import Chunking
from app.core.errors import InputError
from app.core.fold import Assembled, Chunk, fold
from app.sources.columns import Column
from app.sources.locations import Places, shards


@dataclass(frozen=True)
class FileSource:
    """Rows [start, stop) of the columns (all of them unless a window is asked for), with the inline
    arrays of those same rows."""

    columns: Mapping[str, Column]
    chunking: Chunking
    inline: Mapping[str, np.ndarray] = field(default_factory=dict)
    start: int = 0
    stop: int | None = None

    @classmethod
    def open(
        cls, locations: Mapping[str, str], places: Places, chunking: Chunking, inline: Mapping[str, np.ndarray]
    ) -> FileSource:
        """Open every field's files (422 naming the file for one that is missing, outside the allowed
        places, of another dtype or row shape than its siblings) and check that every field, inline ones
        included, has the same number of rows (422 naming the field that differs)."""
        columns = {name: Column.open(f"source.{name}", shards(f"source.{name}", where, places))
                   for name, where in locations.items()}  # fmt: skip
        counts = {f"source.{name}": column.rows for name, column in columns.items()}
        counts |= {name: len(array) for name, array in inline.items()}
        first, rows = next(iter(counts.items()))
        for name, count in counts.items():
            if count != rows:
                raise InputError(name, f"{count} rows, but {first} has {rows}")
        if rows == 0:
            raise InputError(first, "no rows")
        return cls(columns, chunking, inline)

    @property
    def total(self) -> int:
        """Rows of the whole columns."""
        return next(iter(self.columns.values())).rows

    @property
    def rows(self) -> int:
        return (self.total if self.stop is None else self.stop) - self.start

    @property
    def row_bytes(self) -> int:
        return sum(c.row_bytes for c in self.columns.values()) or 1

    def beside(self, arrays: Mapping[str, np.ndarray]) -> FileSource:
        """The same rows with more in-memory arrays of them (of this source's rows)."""
        return replace(self, inline={**self.inline, **arrays})

    def window(self, start: int, stop: int) -> FileSource:
        """Rows [start, stop) of this source (its inline arrays sliced alike), numbered from 0."""
        inline = {name: array[start:stop] for name, array in self.inline.items()}
        return replace(self, inline=inline, start=self.start + start, stop=self.start + stop)

    def read(self) -> dict[str, np.ndarray]:
        """The files' columns read whole (arrays allocated once; the inline ones are the caller's)."""
        names = tuple(self.columns)
        whole: dict[str, np.ndarray] = fold(self, {"rows": Assembled(lambda c: {n: c[n] for n in names}, self.rows)})[
            "rows"
        ]
        return whole

    def chunks(self) -> Iterator[Chunk]:
        step = self.chunking.step(self.row_bytes)
        readers = {name: column.reader(step, self.start) for name, column in self.columns.items()}
        for start, stop in self.chunking.spans(self.rows, self.row_bytes):
            arrays = {name: reader.take(stop - start) for name, reader in readers.items()}
            arrays |= {name: array[start:stop] for name, array in self.inline.items()}
            yield Chunk(start, stop, arrays)

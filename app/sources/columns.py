"""One field's shards as one column of rows: `.npy` files (local ones memory-mapped, remote ones read by
byte range) or Parquet files (pyarrow; the column named as the field, `[N, C]` as a fixed-size list or
list column, or as the columns `<field>.0` … `<field>.<C-1>`). Opening a column reads only headers and
footers, checks that every shard has the same dtype and row shape, and counts the rows, so a bad file is
a 422 naming it before any work; reading is sequential and holds one chunk."""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.core.errors import InputError
from app.core.npy_headers import NPY_HEADERS
from app.sources.locations import Shard

NUMERIC = "biuf"  # bool, integers, floats


@dataclass(frozen=True)
class ShardInfo:
    shard: Shard
    rows: int
    dtype: np.dtype[Any]
    tail: tuple[int, ...]  # the shape of one row
    offset: int = 0  # .npy: where the data starts
    columns: tuple[str, ...] = ()  # Parquet: the columns read (one, or one per class)


def _npy(field: str, shard: Shard) -> ShardInfo:
    try:
        with shard.fs.open(shard.path, "rb") as file, NPY_HEADERS:
            version = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(file)
            offset = file.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(field, f"{shard.location}: not a readable .npy file ({exc})") from exc
    if fortran or dtype.hasobject or dtype.kind not in NUMERIC or not shape:
        raise InputError(field, f"{shard.location}: {dtype} {list(shape)} is not a C-ordered numeric array")
    return ShardInfo(shard, shape[0], dtype, tuple(shape[1:]), offset)


def _parquet(field: str, shard: Shard) -> ShardInfo:
    try:
        with shard.fs.open(shard.path, "rb") as file:
            meta = pq.ParquetFile(file).metadata
            schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(field, f"{shard.location}: not a readable Parquet file ({exc})") from exc
    name = field.rsplit(".", 1)[-1]
    if name in schema.names:
        kind = schema.field(name).type
        if pa.types.is_fixed_size_list(kind):
            return ShardInfo(shard, meta.num_rows, _numpy_type(field, shard, kind.value_type), (kind.list_size,),
                             columns=(name,))  # fmt: skip
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            width = _list_width(field, shard, name)
            return ShardInfo(
                shard, meta.num_rows, _numpy_type(field, shard, kind.value_type), (width,), columns=(name,)
            )
        return ShardInfo(shard, meta.num_rows, _numpy_type(field, shard, kind), (), columns=(name,))
    per_class = sorted(
        ((int(m.group(1)), c) for c in schema.names if (m := re.fullmatch(re.escape(name) + r"\.(\d+)", c))),
    )
    if not per_class or [k for k, _ in per_class] != list(range(len(per_class))):
        raise InputError(field, f"{shard.location}: no column {name!r}, nor columns {name}.0 … {name}.<C-1>")
    kinds = {_numpy_type(field, shard, schema.field(c).type) for _, c in per_class}
    if len(kinds) != 1:
        raise InputError(field, f"{shard.location}: the columns {name}.* differ in type")
    return ShardInfo(shard, meta.num_rows, kinds.pop(), (len(per_class),), columns=tuple(c for _, c in per_class))


def _numpy_type(field: str, shard: Shard, kind: pa.DataType) -> np.dtype[Any]:
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InputError(field, f"{shard.location}: column type {kind} is not numeric")
    dtype: np.dtype[Any] = np.dtype(kind.to_pandas_dtype())
    return dtype


def _list_width(field: str, shard: Shard, name: str) -> int:
    """The one length of every row of a list column (read from its offsets, batch by batch)."""
    widths: set[int] = set()
    with shard.fs.open(shard.path, "rb") as file:
        for batch in pq.ParquetFile(file).iter_batches(columns=[name]):
            lengths = pa.compute.list_value_length(batch.column(0)).to_numpy(zero_copy_only=False)
            widths.update(np.unique(lengths).tolist())
    if len(widths) != 1:
        raise InputError(field, f"{shard.location}: the rows of list column {name!r} differ in length")
    return widths.pop()


@dataclass(frozen=True)
class Column:
    """A field's shards, checked alike: its rows in all, dtype and row shape."""

    field: str
    shards: tuple[ShardInfo, ...]

    @classmethod
    def open(cls, field: str, found: list[Shard]) -> Column:
        infos = tuple(_parquet(field, s) if s.path.endswith((".parquet", ".pq")) else _npy(field, s) for s in found)
        first = infos[0]
        for info in infos[1:]:
            if (info.dtype, info.tail) != (first.dtype, first.tail):
                raise InputError(
                    field, f"{info.shard.location}: {info.dtype} rows of shape {list(info.tail)}, but "
                    f"{first.shard.location} has {first.dtype} rows of shape {list(first.tail)}",
                )  # fmt: skip
        return cls(field, infos)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def row_bytes(self) -> int:
        return self.shards[0].dtype.itemsize * int(np.prod(self.shards[0].tail, dtype=np.int64))

    def reader(self, step: int, start: int = 0) -> ColumnReader:
        """Its rows from `start` on, in order."""
        return ColumnReader(self, step, start)


class ColumnReader:
    """The column's rows in order from `start`, `take(n)` at a time, reading at most `step` rows of a
    shard at once (shards before `start` are not opened; within the first, .npy rows are skipped by offset,
    Parquet rows by whole row groups, then within one)."""

    def __init__(self, column: Column, step: int, start: int = 0) -> None:
        self.blocks = self._blocks(column, step, start)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0

    @staticmethod
    def _blocks(column: Column, step: int, start: int) -> Iterator[np.ndarray]:
        for info in column.shards:
            if start >= info.rows:
                start -= info.rows
                continue
            yield from _blocks(info, step, start)
            start = 0

    def take(self, n: int) -> np.ndarray:
        while self.buffered < n:
            block = next(self.blocks)
            self.buffer.append(block)
            self.buffered += len(block)
        joined = self.buffer[0] if len(self.buffer) == 1 else np.concatenate(self.buffer)
        taken, rest = joined[:n], joined[n:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)
        return np.ascontiguousarray(taken)


def _blocks(info: ShardInfo, step: int, first: int = 0) -> Iterator[np.ndarray]:
    """The shard's rows from row `first` on, in blocks of at most `step` rows."""
    shard = info.shard
    if info.columns:
        with shard.fs.open(shard.path, "rb") as file:
            parquet = pq.ParquetFile(file)
            groups: list[int] = []
            skip = first
            for g in range(parquet.metadata.num_row_groups):
                size = parquet.metadata.row_group(g).num_rows
                if skip >= size and not groups:
                    skip -= size
                else:
                    groups.append(g)
            for batch in parquet.iter_batches(batch_size=step, row_groups=groups, columns=list(info.columns)):
                block = _from_arrow(batch, info)[skip:]
                skip = max(0, skip - len(batch))
                if len(block):
                    yield block
        return
    row_bytes = info.dtype.itemsize * int(np.prod(info.tail, dtype=np.int64))
    if shard.local is not None:
        yield from _mapped_blocks(shard.local, info, row_bytes, step, first)
        return
    with shard.fs.open(shard.path, "rb") as file:
        for start in range(first, info.rows, step):
            count = min(step, info.rows - start)
            file.seek(info.offset + start * row_bytes)
            data = file.read(count * row_bytes)
            yield np.frombuffer(data, info.dtype).reshape(count, *info.tail)


def _mapped_blocks(path: Path, info: ShardInfo, row_bytes: int, step: int, first: int) -> Iterator[np.ndarray]:
    """A local .npy shard memory-mapped, block by block; once the reader asks for the next block, the pages
    of the blocks before it are let go (MADV_DONTNEED: they are the file's, and come back from it if still
    read), so a shard of gigabytes holds about one block resident, not all the blocks it has read."""
    with path.open("rb") as file:  # the map keeps its own descriptor, and lives as long as a block needs it
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    values_per_row = int(np.prod(info.tail, dtype=np.int64))
    released = 0
    for start in range(first, info.rows, step):
        count = min(step, info.rows - start)
        offset = info.offset + start * row_bytes
        yield np.frombuffer(mapped, info.dtype, count * values_per_row, offset).reshape(count, *info.tail)
        done = (offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages before this block's first byte
        if done > released:
            mapped.madvise(mmap.MADV_DONTNEED, released, done - released)
            released = done


def _from_arrow(batch: pa.RecordBatch, info: ShardInfo) -> np.ndarray:
    if len(info.columns) > 1:  # one column per class
        return np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in info.columns], axis=1).astype(
            info.dtype, copy=False
        )
    values = batch.column(0)
    if info.tail:  # a (fixed-size) list column: its flat values, one row of `width` each
        flat: np.ndarray = values.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(values), *info.tail).astype(info.dtype, copy=False)
    column: np.ndarray = values.to_numpy(zero_copy_only=False)
    return column.astype(info.dtype, copy=False)

"""How many rows one onnxruntime call takes: the one place chunk sizes are decided."""

from __future__ import annotations

import sys
from dataclasses import dataclass

DEFAULT_ROWS = 65_536
DEFAULT_BYTES = 8 << 20  # keeps a chunk's intermediates in cache (bench/evaluate.py measures 1–64 MiB)


@dataclass(frozen=True)
class Chunking:
    """At most `rows` rows and at most `bytes` of row data (as the caller sizes a row) per call; the
    service builds one from CALIPER_CHUNK_SIZE and CALIPER_CHUNK_BYTES."""

    rows: int = DEFAULT_ROWS
    bytes: int = DEFAULT_BYTES

    @classmethod
    def blocks_of(cls, rows: int) -> Chunking:
        """Chunks of exactly `rows` rows (the last shorter), whatever a row's bytes."""
        return cls(rows=rows, bytes=sys.maxsize)

    def step(self, row_bytes: int) -> int:
        return max(1, min(self.rows, self.bytes // max(1, row_bytes)))

    def spans(self, n: int, row_bytes: int) -> list[tuple[int, int]]:
        """[start, stop) of each chunk of n rows of `row_bytes` bytes each."""
        step = self.step(row_bytes)
        return [(start, min(start + step, n)) for start in range(0, n, step)]

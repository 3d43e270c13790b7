"""Running small parametrized graphs over chunked data: outputs that are sums are added in float64."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from app.core.runtime import SessionCache, default_cache


def chunk_rows(n: int, row_bytes: int, chunk_bytes: int = 8 << 20) -> list[tuple[int, int]]:
    step = max(1, min(n, chunk_bytes // max(1, row_bytes)))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def summed(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    constants: Mapping[str, np.ndarray],
    cache: SessionCache | None = None,
    chunk_bytes: int = 8 << 20,
) -> dict[str, np.ndarray]:
    """Run a graph whose outputs are sums over rows, chunk by chunk, and add the chunks in float64.
    `rows` are sliced along axis 0; `constants` (parameters) are fed whole to every chunk."""
    session = (cache or default_cache()).get(signature, build)
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(rows.values())))
    row_bytes = sum(a[0].nbytes for a in rows.values()) if n else 1
    total: dict[str, np.ndarray] = {}
    for start, stop in chunk_rows(n, row_bytes, chunk_bytes):
        feeds = {k: v[start:stop] for k, v in rows.items()} | dict(constants)
        for name, value in zip(names, session.run(names, feeds), strict=True):
            value = np.asarray(value, dtype=np.float64)
            total[name] = total[name] + value if name in total else value
    return total


def mapped(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    cache: SessionCache | None = None,
    chunk_bytes: int = 8 << 20,
) -> np.ndarray:
    """Run a row-wise graph with one output chunk by chunk and concatenate the output rows."""
    session = (cache or default_cache()).get(signature, build)
    n = len(next(iter(rows.values())))
    row_bytes = sum(a[0].nbytes for a in rows.values())
    parts = [
        session.run(None, {k: v[a:b] for k, v in rows.items()})[0] for a, b in chunk_rows(n, row_bytes, chunk_bytes)
    ]
    return np.concatenate(parts)

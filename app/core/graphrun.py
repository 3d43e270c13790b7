"""The chunk runner: a graph over rows, in chunks sized by the session cache's `Chunking`; outputs that
are sums are added in float64, row-wise outputs concatenated."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from app.core.runtime import SessionCache, default_cache


def summed(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    constants: Mapping[str, np.ndarray],
    cache: SessionCache | None = None,
) -> dict[str, np.ndarray]:
    """Run a graph whose outputs are sums over rows, chunk by chunk, and add the chunks in float64.
    `rows` are sliced along axis 0; `constants` (parameters) are fed whole to every chunk."""
    cache = cache or default_cache()
    session = cache.get(signature, build)
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(rows.values())))
    row_bytes = sum(a[0].nbytes for a in rows.values()) if n else 1
    total: dict[str, np.ndarray] = {}
    for start, stop in cache.chunking.spans(n, row_bytes):
        feeds = {k: v[start:stop] for k, v in rows.items()} | dict(constants)
        for name, value in zip(names, session.run(names, feeds), strict=True):
            value = np.asarray(value, dtype=np.float64)
            total[name] = total[name] + value if name in total else value
    return total


def mapped_outputs(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    constants: Mapping[str, np.ndarray] | None = None,
    cache: SessionCache | None = None,
    row_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Run a row-wise graph chunk by chunk and concatenate each output's rows. `rows` are sliced along
    axis 0, `constants` fed whole; `row_bytes` (default: the input bytes per row) sizes the chunks when
    a row's intermediates are larger than its inputs."""
    cache = cache or default_cache()
    session = cache.get(signature, build)
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(rows.values())))
    width = row_bytes or sum(a[0].nbytes for a in rows.values())
    parts = [
        session.run(names, {k: v[a:b] for k, v in rows.items()} | dict(constants or {}))
        for a, b in cache.chunking.spans(n, width)
    ]
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}


def mapped(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    cache: SessionCache | None = None,
) -> np.ndarray:
    """`mapped_outputs` of a graph with one output."""
    return next(iter(mapped_outputs(signature, build, rows, None, cache).values()))

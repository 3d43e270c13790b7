"""A cached graph over rows, folded chunk by chunk (`app.core.fold`): outputs that are sums are added in
float64, row-wise outputs assembled in row order; chunks sized by the session cache's `Chunking`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from app.core.fold import Arrays, Assembled, Chunk, InMemory, Summed, fold
from app.core.runtime import SessionCache, default_cache


def session_step(session: ort.InferenceSession, constants: Arrays | None = None) -> Callable[[Chunk], Arrays]:
    """One chunk through `session`: its rows plus the constants fed whole; {output name: value}."""
    names = [o.name for o in session.get_outputs()]

    def step(chunk: Chunk) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(chunk.arrays) | dict(constants or {})), strict=True))

    return step


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
    stage = Summed(session_step(cache.get(signature, build), constants))
    result: dict[str, np.ndarray] = fold(InMemory(rows, cache.chunking), {"sums": stage})["sums"]
    return result


def mapped_outputs(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    constants: Mapping[str, np.ndarray] | None = None,
    cache: SessionCache | None = None,
    row_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Run a row-wise graph chunk by chunk and assemble each output's rows. `rows` are sliced along
    axis 0, `constants` fed whole; `row_bytes` (default: the input bytes per row) sizes the chunks when
    a row's intermediates are larger than its inputs."""
    cache = cache or default_cache()
    source = InMemory(rows, cache.chunking, row_bytes)
    stage = Assembled(session_step(cache.get(signature, build), constants), source.rows)
    result: dict[str, np.ndarray] = fold(source, {"rows": stage})["rows"]
    return result


def mapped(
    signature: str,
    build: Callable[[], onnx.ModelProto],
    rows: Mapping[str, np.ndarray],
    cache: SessionCache | None = None,
) -> np.ndarray:
    """`mapped_outputs` of a graph with one output."""
    return next(iter(mapped_outputs(signature, build, rows, None, cache).values()))

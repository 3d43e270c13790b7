"""Checks of numeric input matrices shared by the fitted-model services (detectors, SDM)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from app.core.errors import InputError

Precision = Literal["auto", "float32", "float64"]


def precision_dtype(precision: Precision, values: np.ndarray) -> np.dtype:
    """The dtype a fitted state is kept and searched in: `auto` is the values' own (api.md: float64 stays
    float64)."""
    return values.dtype if precision == "auto" else np.dtype(precision)


def float_matrix(values: np.ndarray | None, field: str, width: int | None = None) -> np.ndarray:
    """A required, non-empty, finite [N, D] float32/float64 matrix (integers become float64); `width`
    is the D fixed at fit time."""
    if values is None:
        raise InputError(field, "required")
    if values.ndim != 2:
        raise InputError(field, f"must be a 2-D array [N, D], got shape {list(values.shape)}")
    if values.shape[0] == 0:
        raise InputError(field, "is empty (N = 0)")
    if values.dtype.kind not in "fiu" or (values.dtype.kind == "f" and values.dtype not in (np.float32, np.float64)):
        raise InputError(field, f"dtype {values.dtype} is not supported (use float32 or float64)")
    if width is not None and values.shape[1] != width:
        raise InputError(field, f"has D = {values.shape[1]} columns; the model was fitted on D = {width}")
    matrix = np.ascontiguousarray(values, dtype=values.dtype if values.dtype.kind == "f" else np.float64)
    if not np.isfinite(matrix).all():
        raise InputError(field, "contains NaN or infinite value(s)")
    return matrix

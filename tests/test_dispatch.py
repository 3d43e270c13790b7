"""The narrowed-dispatch pass of `make test-narrow` really runs on other kernels (it is no silent no-op)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from app.core import runtime


@pytest.mark.skipif(not os.environ.get("NPY_DISABLE_CPU_FEATURES"), reason="only in the narrowed pass")
def test_numpy_dispatch_is_narrowed() -> None:
    from numpy._core._multiarray_umath import __cpu_features__

    for feature in os.environ["NPY_DISABLE_CPU_FEATURES"].split():
        assert not __cpu_features__.get(feature, False), feature
    assert np.exp(np.float32(1.0)) == pytest.approx(np.e, rel=1e-6)  # and numpy still computes


@pytest.mark.skipif(not os.environ.get("CALIPER_INTRA_OP_THREADS"), reason="only in the narrowed pass")
def test_onnxruntime_threads_follow_the_environment() -> None:
    assert runtime.default_cache().config.intra_op_threads == int(os.environ["CALIPER_INTRA_OP_THREADS"])

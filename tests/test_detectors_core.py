"""The detector estimators: the fitted state round-trips through `fitted_arrays` (and blobs stored
before state versions), other versions are refused, hyper-parameters stay out of the state, and a
chunked fit equals the one-shot one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.core.chunking import Chunking
from app.core.detectors import (
    Detector,
    GaussianDetector,
    KnnDetector,
    LayerEnsemble,
    PerClassGaussianDetector,
    VimDetector,
)
from app.core.fitted_state import IncompatibleFittedStateError
from app.core.runtime import RuntimeConfig, SessionCache

RNG = np.random.default_rng(11)
LABELS = RNG.integers(0, 3, 300)
FEATURES = RNG.normal(size=(300, 5)) + LABELS[:, None] * 2.0
TEST = RNG.normal(size=(40, 5)) * 2 + 1
HEAD_W, HEAD_B = RNG.normal(size=(3, 5)), RNG.normal(size=3)

MAKERS: dict[str, Callable[[SessionCache], Detector]] = {
    "tied": lambda c: GaussianDetector(cache=c),
    "relative_oas": lambda c: GaussianDetector(relative=True, shrinkage="oas", cache=c),
    "ledoit_wolf_normalized": lambda c: GaussianDetector(shrinkage="ledoit_wolf", normalize=True, cache=c),
    "per_class": lambda c: PerClassGaussianDetector(ridge=0.01, cache=c),
    "knn_float32": lambda c: KnnDetector(k=4, precision="float32", cache=c),
    "vim": lambda c: VimDetector(2, HEAD_W, HEAD_B, cache=c),
}


def cache(rows: int = 65_536) -> SessionCache:
    return SessionCache(RuntimeConfig(chunking=Chunking(rows=rows)))


@pytest.mark.parametrize("name", MAKERS)
def test_fitted_state_round_trips_and_refuses_other_versions(name: str) -> None:
    fitted = MAKERS[name](cache()).fit(FEATURES, LABELS)
    state = fitted.fitted_arrays()
    assert set(state) <= {*fitted.state_keys(), "state_version"} and int(state["state_version"]) == 1
    assert not {"k", "shrinkage", "ridge", "normalize", "precision", "dim"} & set(state)  # hyper-parameters
    want = fitted.score(TEST)
    before_versions = {k: v for k, v in state.items() if k != "state_version"}
    for stored in (state, before_versions):
        restored = MAKERS[name](cache()).load_arrays(stored)
        assert (restored.classes, restored.dim) == (3, 5)
        for got, expected in zip(restored.score(TEST), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(IncompatibleFittedStateError, match="state version 2"):
        MAKERS[name](cache()).load_arrays({**state, "state_version": np.asarray(2)})


@pytest.mark.parametrize("name", ["tied", "ledoit_wolf_normalized", "per_class"])
def test_a_chunked_fit_equals_the_one_shot_fit(name: str) -> None:
    whole = MAKERS[name](cache()).fit(FEATURES, LABELS).fitted_arrays()
    chunked = MAKERS[name](cache(rows=17)).fit(FEATURES, LABELS).fitted_arrays()
    assert whole.keys() == chunked.keys()
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_an_ensemble_sums_its_weighted_layers_and_round_trips() -> None:
    layers = {"a": FEATURES, "b": FEATURES[:, :3] * 3}
    ensemble = LayerEnsemble({n: GaussianDetector(cache=cache()) for n in layers}, {"a": 0.25, "b": 2.0})
    ensemble.fit(layers, LABELS)
    test = {"a": TEST, "b": TEST[:, :3]}
    scores, _ = ensemble.score(test, "detector:test-ensemble")
    alone = [ensemble.layers[n].score(test[n])[0] for n in layers]
    np.testing.assert_allclose(scores, 0.25 * alone[0] + 2.0 * alone[1], rtol=1e-12)
    mixed = {"a": TEST.astype(np.float32), "b": TEST[:, :3]}  # mixed precisions meet in float64
    scores_mixed, _ = ensemble.score(mixed, "detector:test-ensemble")
    wide = [ensemble.layers[n].score(mixed[n].astype(np.float64))[0] for n in layers]
    np.testing.assert_allclose(scores_mixed, 0.25 * wide[0] + 2.0 * wide[1], rtol=1e-12)
    restored = LayerEnsemble({n: GaussianDetector(cache=cache()) for n in layers})
    restored.load_arrays(ensemble.fitted_arrays(), ensemble.weights_)
    np.testing.assert_array_equal(restored.score(test, "detector:test-ensemble-restored")[0], scores)

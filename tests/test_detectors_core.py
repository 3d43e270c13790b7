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

MAKERS: dict[str, Callable[[], Detector]] = {
    "tied": lambda: GaussianDetector(),
    "relative_oas": lambda: GaussianDetector(relative=True, shrinkage="oas"),
    "ledoit_wolf_normalized": lambda: GaussianDetector(shrinkage="ledoit_wolf", normalize=True),
    "per_class": lambda: PerClassGaussianDetector(ridge=0.01),
    "knn_float32": lambda: KnnDetector(k=4, precision="float32"),
    "vim": lambda: VimDetector(2, HEAD_W, HEAD_B),
}


def cache(rows: int = 65_536) -> SessionCache:
    return SessionCache(RuntimeConfig(chunking=Chunking(rows=rows)))


@pytest.mark.parametrize("name", MAKERS)
def test_fitted_state_round_trips_and_refuses_other_versions(name: str) -> None:
    fitted = MAKERS[name]().fit(FEATURES, LABELS, cache())
    state = fitted.fitted_arrays()
    assert set(state) <= {*fitted.state_keys(), "state_version"} and int(state["state_version"]) == 1
    assert not {"k", "shrinkage", "ridge", "normalize", "precision", "dim"} & set(state)  # hyper-parameters
    want = fitted.score(TEST, cache=cache())
    before_versions = {k: v for k, v in state.items() if k != "state_version"}
    for stored in (state, before_versions):
        restored = MAKERS[name]().load_arrays(stored)
        assert (restored.classes, restored.dim) == (3, 5)
        for got, expected in zip(restored.score(TEST, cache=cache()), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(IncompatibleFittedStateError, match="state version 2"):
        MAKERS[name]().load_arrays({**state, "state_version": np.asarray(2)})


@pytest.mark.parametrize("name", ["tied", "ledoit_wolf_normalized", "per_class"])
def test_a_chunked_fit_equals_the_one_shot_fit(name: str) -> None:
    whole = MAKERS[name]().fit(FEATURES, LABELS, cache()).fitted_arrays()
    chunked = MAKERS[name]().fit(FEATURES, LABELS, cache(rows=17)).fitted_arrays()
    assert whole.keys() == chunked.keys()
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_an_ensemble_sums_its_weighted_layers_and_round_trips() -> None:
    layers = {"a": FEATURES, "b": FEATURES[:, :3] * 3}
    ensemble = LayerEnsemble({n: GaussianDetector() for n in layers}, {"a": 0.25, "b": 2.0})
    ensemble.fit(layers, LABELS, cache())
    test = {"a": TEST, "b": TEST[:, :3]}
    scores, _ = ensemble.score(test, "detector:test-ensemble")
    alone = [ensemble.layers[n].score(test[n])[0] for n in layers]
    np.testing.assert_allclose(scores, 0.25 * alone[0] + 2.0 * alone[1], rtol=1e-12)
    mixed = {"a": TEST.astype(np.float32), "b": TEST[:, :3]}  # mixed precisions meet in float64
    scores_mixed, _ = ensemble.score(mixed, "detector:test-ensemble")
    wide = [ensemble.layers[n].score(mixed[n].astype(np.float64))[0] for n in layers]
    np.testing.assert_allclose(scores_mixed, 0.25 * wide[0] + 2.0 * wide[1], rtol=1e-12)
    restored = LayerEnsemble({n: GaussianDetector() for n in layers})
    restored.load_arrays(ensemble.fitted_arrays(), ensemble.weights_)
    np.testing.assert_array_equal(restored.score(test, "detector:test-ensemble-restored")[0], scores)


@pytest.mark.parametrize("name", MAKERS)
def test_hyper_parameters_rebuild_the_estimator_and_no_runtime_object_is_kept(name: str) -> None:
    """scikit-learn's contract: `type(d)(**d.get_params())` is the same unfitted estimator; the runtime
    (sessions, chunk sizes) is given to fit and score, never kept."""
    detector = MAKERS[name]()
    params = detector.get_params()
    clone = type(detector)(**params)
    assert clone.get_params().keys() == params.keys()
    for key, value in params.items():
        np.testing.assert_array_equal(clone.get_params()[key], value, err_msg=key)
    fitted = detector.fit(FEATURES, LABELS, cache())
    assert not any(isinstance(v, SessionCache) for v in vars(fitted).values())


def test_every_method_of_the_registry_builds_from_its_params() -> None:
    from app.ood.methods import METHODS

    params = {"knn": {"k": 3}, "vim": {"dim": 2, "weight": HEAD_W.tolist(), "bias": HEAD_B.tolist()}}
    for name, method in METHODS.items():
        detector = method.create(params.get(name, {}))
        assert isinstance(detector, Detector), name
        assert detector.fit(FEATURES, LABELS, cache()).classes == 3, name

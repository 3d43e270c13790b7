"""Mahalanobis core against the exact golden vector (mahalanobis.md §10), and its fit properties."""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.errors import InputError
from app.core.mahalanobis import GaussianStats, MahalanobisModel, fit, scoring_graph
from tests.conftest import load_golden

X = np.array([(1, 2, 0), (2, 3, 1), (3, 3, 2), (2, 0, 1), (6, 5, 3), (7, 7, 4), (5, 6, 5), (6, 6, 4)], dtype=float)
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
TEST = np.array([(2, 2, 1), (4, 4, 2.5), (0, 8, 0), (6, 5, 4)], dtype=float)


def exact(value: object) -> float:
    return float(Fraction(value["exact"]))  # type: ignore[index]


def score(model: MahalanobisModel, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(
        scoring_graph(model, features.dtype).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    scores, nearest = session.run(None, {"features": features})
    return scores, nearest


def test_fit_statistics_match_the_exact_values() -> None:
    golden = load_golden("mahalanobis_exact.json")
    stats = GaussianStats.of(X, Y, 2)
    np.testing.assert_allclose(stats.class_means, [[exact(v) for v in row] for row in golden["mu"]], atol=1e-14)
    np.testing.assert_allclose(stats.within_scatter(), [[exact(v) for v in row] for row in golden["W"]], atol=1e-13)
    np.testing.assert_allclose(stats.scatter, [[exact(v) for v in row] for row in golden["T_scatter"]], atol=1e-13)


@pytest.mark.parametrize("inverse", ["pinv", "solve"])
def test_scores_match_the_exact_golden_table(inverse: str) -> None:
    golden = load_golden("mahalanobis_exact.json")
    mds, nearest = score(fit(GaussianStats.of(X, Y, 2), inverse=inverse), TEST)  # type: ignore[arg-type]
    np.testing.assert_allclose(mds, [-exact(v) for v in golden["MDS_conf"]], atol=1e-12)
    np.testing.assert_array_equal(nearest, [int(exact(v)) for v in golden["argmin_class"]])  # t2: tie -> class 0
    relative, _ = score(fit(GaussianStats.of(X, Y, 2), inverse=inverse, relative=True), TEST)  # type: ignore[arg-type]
    np.testing.assert_allclose(relative, [-exact(v) for v in golden["RMDS_conf"]], atol=1e-12)


def test_shrinkage_variants_match_the_spec() -> None:
    stats = GaussianStats.of(X, Y, 2)
    centred = X - stats.class_means[Y]
    fourth = float(np.sum(np.sum(centred**2, axis=1) ** 2))
    lw, _ = score(fit(stats, shrinkage="ledoit_wolf", fourth_moment=fourth), TEST)
    np.testing.assert_allclose(lw, [0, 15.057504425, 61.330167290, 1.476813708], atol=1e-8)
    oas, _ = score(fit(stats, shrinkage="oas"), TEST)
    np.testing.assert_allclose(oas, [0, 15.375, 61.5, 1.5], atol=1e-12)
    full, _ = score(fit(stats, shrinkage=1.0), TEST)  # α = 1: (2/3)·I, the same as OAS here
    np.testing.assert_allclose(full, oas, atol=1e-12)


def test_solve_fails_clearly_on_a_singular_covariance_and_pinv_copes() -> None:
    singular = np.column_stack([X, X[:, 0]])  # a duplicated feature
    with pytest.raises(InputError, match="singular"):
        fit(GaussianStats.of(singular, Y, 2), inverse="solve")
    scores, _ = score(fit(GaussianStats.of(singular, Y, 2)), np.column_stack([TEST, TEST[:, 0]]))
    np.testing.assert_allclose(scores, [0, 127 / 12, 220 / 3, 1.25], atol=1e-9)  # the duplicate adds nothing
    ridged, _ = score(
        fit(GaussianStats.of(singular, Y, 2), ridge=1e-3, inverse="solve"), np.column_stack([TEST, TEST[:, 0]])
    )
    assert np.all(np.isfinite(ridged))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 199), max_size=5))
def test_chunked_fit_equals_one_shot(seed: int, cuts: list[int]) -> None:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(200, 6)) * 3 + 100  # a large offset: the centred merge keeps precision
    labels = rng.integers(0, 4, 200)
    bounds = [0, *sorted(set(cuts)), 200]
    merged = GaussianStats(4, 6)
    for lo, hi in itertools.pairwise(bounds):
        merged = merged.merge(GaussianStats.of(features[lo:hi], labels[lo:hi], 4))
    whole = GaussianStats.of(features, labels, 4)
    np.testing.assert_allclose(merged.within_scatter(), whole.within_scatter(), rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 119), max_size=4), st.booleans())
def test_chunks_that_see_fewer_classes_widen_to_the_whole_fit(seed: int, cuts: list[int], per_class: bool) -> None:
    """A chunk knows only the classes up to its largest label (a fit from files learns C as it reads):
    merging widens them, in either order, to the one-shot statistics."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, 5, 120))  # sorted: early chunks see the low classes only
    features = rng.normal(size=(120, 3)) + labels[:, None]
    bounds = [0, *sorted(set(cuts)), 120]
    parts = [GaussianStats.of(features[a:b], labels[a:b], int(labels[a:b].max()) + 1, per_class)
             for a, b in itertools.pairwise(bounds)]  # fmt: skip
    whole = GaussianStats.of(features, labels, int(labels.max()) + 1, per_class)
    for merged in (functools.reduce(GaussianStats.merge, parts), functools.reduce(lambda a, b: b.merge(a), parts)):
        assert merged.classes == whole.classes
        np.testing.assert_array_equal(merged.class_counts, whole.class_counts)
        np.testing.assert_allclose(merged.class_sums, whole.class_sums, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(merged.within_scatter(), whole.within_scatter(), rtol=1e-10, atol=1e-10)
        if per_class:
            assert merged.class_scatter is not None and whole.class_scatter is not None
            np.testing.assert_allclose(merged.class_scatter, whole.class_scatter, rtol=1e-10, atol=1e-10)


def test_float32_scoring_is_accurate_when_centred() -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(500, 16)) + 50  # the offset that breaks the uncentred float32 form (§7.4)
    labels = rng.integers(0, 5, 500)
    model = fit(GaussianStats.of(features, labels, 5))
    test = rng.normal(size=(100, 16)) + 50
    f64, _ = score(model, test)
    f32, _ = score(model, test.astype(np.float32))
    np.testing.assert_allclose(f32, f64, rtol=1e-4)


def test_normalize_scores_directions_not_lengths() -> None:
    model = fit(GaussianStats.of(X / np.linalg.norm(X, axis=1, keepdims=True), Y, 2), normalize=True)
    a, _ = score(model, TEST)
    b, _ = score(model, TEST * 7.0)
    np.testing.assert_allclose(a, b, atol=1e-9)

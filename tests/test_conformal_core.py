"""Split conformal sets (api.md, "Guarantees") against a numpy oracle written from the contract, MAPIE
where its definitions coincide, and the properties the guarantee rests on.

Where MAPIE differs by design (not followed): its APS conformity scores are randomised (cumsum − U·p_y),
its RAPS tunes k_reg/λ on a split of the calibration rows, its top-k rank is 0-based, and it breaks ties
by the higher class index (`fliplr(argsort)`); its non-randomised building block
(`get_true_label_cumsum_proba`) and its LAC quantile and sets agree with ours on tie-free data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.conformal import ConformalPredictor, Coverage, conformal_quantile, quantile_rank
from app.core.probability_inputs import Probabilities, as_given, softmax

METHODS = ("lac", "aps", "raps", "top_k")
GIVEN = Probabilities("probabilities", as_given, "given")
LOGITS = Probabilities("logits", softmax, "softmax")


def oracle_scores(p: np.ndarray, method: str, lam: float = 0.01, k_reg: int = 1) -> np.ndarray:
    """s(x, y) for every class [N, C], in float64, as api.md defines them (ranks by (−p_j, j))."""
    p = p.astype(np.float64)
    n, c = p.shape
    order = np.argsort(-p, axis=1, kind="stable")  # ties: the lower index first
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(c)
    aps = np.take_along_axis(np.cumsum(np.take_along_axis(p, order, 1), 1), rank, 1)
    o = rank + 1
    scores = {"lac": 1 - p, "aps": aps, "raps": aps + lam * np.maximum(0, o - k_reg), "top_k": o.astype(np.float64)}
    return scores[method]


def oracle_quantile(scores: np.ndarray, alpha: float) -> float:
    k = int(np.ceil((len(scores) + 1) * (1 - alpha) - 1e-9))
    return np.inf if k > len(scores) else float(np.sort(scores)[k - 1])


def sampled_labels(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """Labels drawn from each row's probabilities (a calibrated model)."""
    rows = p.astype(np.float64)
    return np.array([rng.choice(rows.shape[1], p=row / row.sum()) for row in rows])


def probabilities(rng: np.random.Generator, n: int, c: int, scale: float = 2.0) -> np.ndarray:
    z = rng.normal(size=(n, c)) * scale
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_and_sets_match_the_oracle(method: str, dtype: type) -> None:
    rng = np.random.default_rng(1)
    p = probabilities(rng, 400, 6).astype(dtype)
    p[:50] = np.round(p[:50].astype(np.float64), 1).astype(dtype)  # ties, broken by the lower index
    p[:50] /= p[:50].sum(1, keepdims=True)
    labels = sampled_labels(rng, p)  # an informative model: q̂ below 1, away from the last class's cumsum
    predictor = ConformalPredictor(method, 0.1, lam=0.05, k_reg=2).fit(p, labels, GIVEN)  # type: ignore[arg-type]
    scores = oracle_scores(p, method, 0.05, 2)
    q = oracle_quantile(scores[np.arange(400), labels], 0.1)
    assert float(predictor.quantiles_) == pytest.approx(q, rel=1e-12, abs=1e-12)
    fresh = probabilities(rng, 300, 6).astype(dtype)
    sets, sizes = predictor.predict(fresh, GIVEN, f"oracle:{method}")
    expected, margin = oracle_scores(fresh, method, 0.05, 2) <= q, np.abs(oracle_scores(fresh, method, 0.05, 2) - q)
    far = (margin > 1e-9) | (method == "top_k")  # within rounding of q̂ either side may win; ranks are exact
    assert far.mean() > 0.9 and (sets[far] == expected[far]).all()
    np.testing.assert_array_equal(sizes, sets.sum(1))


def test_the_quantile_index_is_the_contracts() -> None:
    """k = ⌈(n + 1)(1 − α) − 1e-9⌉: 25·(1 − 0.44) = 14 in exact arithmetic but 14.000000000000002 in
    float64, and stays 14 (a bare ceil would give 15); k > n is +∞."""
    assert 25 * (1 - 0.44) > 14 and quantile_rank(24, 0.44) == 14
    assert quantile_rank(9, 0.1) == 9 and quantile_rank(19, 0.05) == 19 and quantile_rank(8, 0.1) == 9
    scores = np.arange(1.0, 10.0)
    assert conformal_quantile(scores, 0.1) == 9.0
    assert conformal_quantile(scores[:8], 0.1) == np.inf
    assert conformal_quantile(np.empty(0), 0.5) == np.inf
    assert conformal_quantile(scores, 0.5) == 5.0  # k = ⌈10 · 0.5⌉ = 5


def test_logits_rank_their_softmax_and_mondrian_quantiles_are_per_class() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(600, 4)) * 2
    labels = rng.integers(0, 4, 600)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    predictor = ConformalPredictor("aps", 0.2, mondrian=True).fit(z, labels, LOGITS)
    scores = oracle_scores(p, "aps")[np.arange(600), labels]
    expected = [oracle_quantile(scores[labels == c], 0.2) for c in range(4)]
    np.testing.assert_allclose(predictor.quantiles_, expected, rtol=1e-12)
    few = ConformalPredictor("lac", 0.05, mondrian=True).fit(z[:30], np.minimum(labels[:30], 1) * 3, LOGITS)
    assert np.isinf(few.quantiles_[[1, 2]]).all()  # classes without rows: +∞, their sets admit them


def test_lac_quantile_and_sets_agree_with_mapie() -> None:
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Given(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        """A prefit model whose inputs are its probabilities."""

        def fit(self, x: np.ndarray, y: np.ndarray) -> Given:
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(x)

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.argmax(x, 1)

    rng = np.random.default_rng(3)
    p, labels, fresh = probabilities(rng, 700, 7), rng.integers(0, 7, 700), probabilities(rng, 200, 7)
    ours = ConformalPredictor("lac", 0.1).fit(p, labels, GIVEN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapie = SplitConformalClassifier(
            Given().fit(p, labels), confidence_level=0.9, conformity_score="lac", prefit=True
        )
        mapie.conformalize(p, labels)
        _, theirs = mapie.predict_set(fresh)
    assert float(ours.quantiles_) == pytest.approx(
        float(mapie._mapie_classifier.conformity_score_function_.quantiles_[0]), abs=0
    )
    sets, _ = ours.predict(fresh, GIVEN, "mapie-lac")
    np.testing.assert_array_equal(sets, theirs[:, :, 0])


def test_aps_and_raps_scores_agree_with_mapies_non_randomised_building_block() -> None:
    from mapie.conformity_scores import APSConformityScore

    rng = np.random.default_rng(4)
    p, labels = probabilities(rng, 500, 8), rng.integers(0, 8, 500)  # continuous: no ties
    cumsum, rank = APSConformityScore.get_true_label_cumsum_proba(labels, p, np.arange(8))
    np.testing.assert_allclose(oracle_scores(p, "aps")[np.arange(500), labels], cumsum.ravel(), rtol=1e-12)
    raps = cumsum.ravel() + 0.3 * np.maximum(0, rank - 2)
    np.testing.assert_allclose(oracle_scores(p, "raps", 0.3, 2)[np.arange(500), labels], raps, rtol=1e-12)
    for method, expected in (("aps", cumsum.ravel()), ("raps", raps)):
        fitted = ConformalPredictor(method, 0.1, lam=0.3, k_reg=2).fit(p, labels, GIVEN)  # type: ignore[arg-type]
        assert float(fitted.quantiles_) == pytest.approx(oracle_quantile(expected, 0.1), rel=1e-12)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(METHODS), st.sampled_from([0.05, 0.1, 0.2]), st.integers(0, 2**32 - 1))
def test_coverage_over_random_splits_is_at_least_one_minus_alpha(method: str, alpha: float, seed: int) -> None:
    """Exchangeable calibration and test rows: E[coverage] ∈ [1 − α, 1 − α + 1/(n + 1)] (Vovk; the upper
    bound needs continuous scores, which top_k is not, so it is checked for the other three). 300 random
    splits of n = 200: the mean's standard error is √(α(1 − α)/((n + 2)·300)) ≤ 0.0016; allow 4 of them."""
    rng = np.random.default_rng(seed)
    n, m, splits = 200, 100, 300
    z = rng.normal(size=(n + m, 5)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = sampled_labels(rng, p)
    covered = []
    for _ in range(splits):
        perm = rng.permutation(n + m)
        cal, test = perm[:n], perm[n:]
        scores = oracle_scores(p, method)
        q = oracle_quantile(scores[cal, labels[cal]], alpha)
        covered.append(np.mean(scores[test, labels[test]] <= q))
    mean, margin = float(np.mean(covered)), 4 * np.sqrt(alpha * (1 - alpha) / ((n + 2) * splits))
    assert mean >= 1 - alpha - margin
    if method != "top_k":
        assert mean <= 1 - alpha + 1 / (n + 1) + margin


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(METHODS), st.booleans(), st.integers(0, 2**32 - 1))
def test_sets_are_nested_in_alpha(method: str, mondrian: bool, seed: int) -> None:
    """q̂ is the k-th smallest score with k non-increasing in α: a smaller α never gives a smaller set."""
    rng = np.random.default_rng(seed)
    p, labels, fresh = probabilities(rng, 300, 5), rng.integers(0, 5, 300), probabilities(rng, 100, 5)
    sets = [ConformalPredictor(method, a, mondrian).fit(p, labels, GIVEN).predict(fresh, GIVEN, f"nest:{a}")[0]  # type: ignore[arg-type]
            for a in (0.05, 0.1, 0.3)]  # fmt: skip
    assert (sets[0] >= sets[1]).all() and (sets[1] >= sets[2]).all()


def test_mondrian_coverage_holds_per_class() -> None:
    """Class-conditional q̂_c: coverage ≥ 1 − α within each class (Vovk 2012), also for a rare class that
    marginal calibration under-covers. Mean over 200 random splits, 4 standard errors of slack."""
    rng = np.random.default_rng(7)
    n, alpha = 1200, 0.1
    labels = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    z = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[labels] * np.array([1.5, 1.0, 0.3])  # class 2: hard
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    scores = oracle_scores(p, "lac")
    per_class = np.zeros((200, 3))
    for k in range(200):
        perm = rng.permutation(n)
        cal, test = perm[: n // 2], perm[n // 2 :]
        q = np.array([oracle_quantile(scores[cal][labels[cal] == c, c], alpha) for c in range(3)])
        hit = scores[test, labels[test]] <= q[labels[test]]
        per_class[k] = [hit[labels[test] == c].mean() for c in range(3)]
    rows = np.bincount(labels, minlength=3) / 2
    slack = 4 * np.sqrt(alpha * (1 - alpha) / (rows * 200))
    assert (per_class.mean(0) >= 1 - alpha - slack).all()
    predictor = ConformalPredictor("lac", alpha, mondrian=True).fit(p, labels, GIVEN)
    np.testing.assert_allclose(
        predictor.quantiles_, [oracle_quantile(scores[labels == c, c], alpha) for c in range(3)], rtol=1e-12
    )


def test_coverage_reports_per_class_and_per_size() -> None:
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]], bool)
    sizes = sets.sum(1)
    report = Coverage.of(sets, sizes, np.array([0, 1, 0, 0]))
    assert report.coverage == 0.5 and report.mean_set_size == 1.25
    np.testing.assert_array_equal(report.class_coverage, [1 / 3, 1.0, np.nan])
    assert report.size_stratified == {0: 0.0, 1: 1.0, 2: 0.5}

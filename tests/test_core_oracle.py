"""The ONNX core against the independent numpy oracle on random inputs, float32 and float64."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.core.chunking import Chunking
from tests import oracle
from tests.test_core_golden import evaluate

LOSSES: list[dict[str, Any]] = [
    {"name": "cross_entropy"},
    {"name": "cross_entropy", "label_smoothing": 0.2, "weight": "w", "key": "ce_ws"},
    {"name": "nll"},
    {"name": "brier"},
    {"name": "focal", "gamma": 1.5, "alpha": "w"},
    {"name": "z_loss", "a": 1.5, "b": 0.5},
    {"name": "ldr_kl", "lam": 2.0, "margin": 0.5},
    {"name": "ldr_kl", "transform": "reference", "key": "ldr_ref"},
    {"name": "aldr_kl"},
    {"name": "aldr_kl", "transform": "reference", "key": "aldr_ref"},
    {"name": "comp_sum", "tau": 0.5},
    {"name": "comp_sum", "tau": 1.0, "key": "cs1"},
    {"name": "gce", "q": 0.3, "k": 0.4},
    {"name": "mae"},
    {"name": "sum_exp"},
    {"name": "dice", "alpha": 0.2, "gamma": 0.5},
    {"name": "stablemax_ce"},
    {"name": "taylor_softmax_ce", "order": 4},
    {"name": "hinge_crammer_singer", "margin": 0.5},
    {"name": "hinge_weston_watkins"},
    {"name": "squared_hinge"},
    {"name": "kd", "temperature": 2.0},
    {"name": "nkd", "temperature": 2.0, "gamma": 1.0},
]
METRICS: list[dict[str, Any]] = [
    {"name": "accuracy"},
    {"name": "top_k_accuracy", "k": 3},
    {"name": "nll"},
    {"name": "brier"},
    {"name": "ece", "bins": 10},
    {"name": "ece", "bins": 7, "norm": "l2", "key": "rms"},
    {"name": "ece", "bins": 6, "binning": "quantile", "key": "ece_q"},
    {"name": "mce", "bins": 12},
    {"name": "classwise_ece", "bins": 8},
    {"name": "entropy"},
    {"name": "aurc"},
    {"name": "softmax_collapse"},
]


def _resolve(spec: dict[str, Any], c: int, rng: np.random.Generator) -> dict[str, Any]:
    return {k: (tuple(rng.uniform(0.2, 2.0, c)) if v == "w" else v) for k, v in spec.items()}


def _data(
    seed: int, n: int, c: int, scales: tuple[float, ...] = (0.5, 3.0, 40.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = rng.choice(scales, size=(n, 1))
    z = rng.normal(size=(n, c)) * scale
    y = rng.integers(0, c, n)
    zt = rng.normal(size=(n, c)) * 2
    w = rng.uniform(0.1, 2.0, n)
    return z, y, zt, w


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("seed", "n", "c"), [(0, 57, 2), (1, 200, 5), (2, 131, 17)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_losses_match_oracle(seed: int, n: int, c: int, dtype: type, weighted: bool) -> None:
    z, y, zt, w = _data(seed, n, c)
    rng = np.random.default_rng(seed + 100)
    specs = [_resolve(s, c, rng) for s in LOSSES]
    z = z.astype(dtype).astype(np.float64)  # the oracle sees exactly the values the core sees
    zt = zt.astype(dtype).astype(np.float64)
    weights = w.astype(dtype).astype(np.float64) if weighted else None
    extra = {"sample_weight": weights} if weighted else {}
    result, rows = evaluate(z, y, specs, [], dtype, chunk=50, teacher_logits=zt, **extra)
    rtol = 1e-9 if dtype is np.float64 else 1e-4
    for spec in specs:
        key = spec.get("key", spec["name"])
        params = {k: v for k, v in spec.items() if k not in ("name", "key")}
        expected_rows, _ = oracle.loss_rows(spec["name"], z, y, params, zt)
        np.testing.assert_allclose(rows[f"loss.{key}.row"], expected_rows, rtol=rtol, atol=rtol, err_msg=key)
        expected = oracle.loss_mean(spec["name"], z, y, params, zt, weights)
        np.testing.assert_allclose(result.losses[key], expected, rtol=rtol, atol=rtol, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("seed", "n", "c"), [(3, 64, 2), (4, 300, 4), (5, 151, 12)])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_metrics_match_oracle(seed: int, n: int, c: int, dtype: type, weighted: bool) -> None:
    z, y, _, w = _data(seed, n, c, scales=(0.5, 3.0, 120.0))  # 120: rows that collapse, mostly with p_ŷ = 1
    z = z.astype(dtype).astype(np.float64)
    keep = oracle.off_discontinuities(z, {m["bins"] for m in METRICS if "bins" in m and "binning" not in m})
    z, y, w = z[keep], y[keep], w[keep]
    assert len(z) > 0.8 * n  # the filter only takes the few rows that sit on a discontinuity
    weights = w.astype(dtype).astype(np.float64) if weighted else None
    extra = {"sample_weight": weights} if weighted else {}
    result, _ = evaluate(z, y, [], METRICS, dtype, chunk=40, **extra)
    tol = 1e-9 if dtype is np.float64 else 1e-4
    for spec in METRICS:
        key = spec.get("key", spec["name"])
        params = {k: v for k, v in spec.items() if k not in ("name", "key")}
        expected = oracle.metric(spec["name"], z, y, params, weights)
        np.testing.assert_allclose(result.metrics[key], expected, rtol=tol, atol=tol, err_msg=key)


def test_soft_targets_agree_with_one_hot_labels() -> None:
    z, y, _, _ = _data(7, 90, 6)
    specs = [{"name": "cross_entropy", "label_smoothing": 0.1}, {"name": "brier"}, {"name": "focal"}, {"name": "dice"}]
    metrics = [{"name": "accuracy"}, {"name": "nll"}, {"name": "brier"}, {"name": "classwise_ece"}]
    hard, _ = evaluate(z, y, specs, metrics)
    soft, _ = evaluate(z, None, specs, metrics, targets=np.eye(6)[y])
    for group in ("losses", "metrics"):
        for key, value in getattr(hard, group).items():
            np.testing.assert_allclose(getattr(soft, group)[key], value, rtol=1e-12, err_msg=key)


def test_probabilities_input_matches_logits_input() -> None:
    z, y, _, _ = _data(8, 80, 4)
    from scipy.special import softmax

    specs = [{"name": "cross_entropy"}, {"name": "brier"}, {"name": "focal"}]
    metrics = [{"name": "accuracy"}, {"name": "ece"}, {"name": "nll"}, {"name": "aurc"}]
    from_logits, _ = evaluate(z, y, specs, metrics)
    probs = softmax(z / 3, axis=1)  # moderate so that no probability underflows
    from_probs_expected, _ = evaluate(np.log(probs), y, specs, metrics)
    from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
    from tests.test_core_golden import LOSS, METRIC

    batch = validate_batch(probabilities=probs, labels=y)
    plan = EvaluationPlan(
        batch.layout, tuple(LOSS.validate_python(s) for s in specs), tuple(METRIC.validate_python(m) for m in metrics)
    )
    evaluator = Evaluator(plan)
    got = evaluator.evaluate(batch, Chunking(rows=30)).result
    for key, value in from_probs_expected.losses.items():
        np.testing.assert_allclose(got.losses[key], value, rtol=1e-10, err_msg=key)
    assert from_logits.metrics["accuracy"] == got.metrics["accuracy"]

"""Every loss and metric against the golden vectors of ../shared/golden (dataset A and B)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from app.core.chunking import Chunking
from app.core.evaluation import EvaluationPlan, EvaluationResult, Evaluator, validate_batch
from app.core.losses import LossSpec
from app.core.metrics import MetricSpec
from tests.conftest import Q_A, W_A, Y_A, Y_B, Z_A, Z_B, ZT_A, load_golden

LOSS = TypeAdapter(LossSpec)
METRIC = TypeAdapter(MetricSpec)
F32_RTOL = 2e-6  # float32 arithmetic, float64 accumulation: observed ≤ 5e-7 relative on these inputs


def evaluate(
    z: np.ndarray,
    y: np.ndarray | None,
    losses: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    dtype: type = np.float64,
    chunk: int = 3,
    **arrays: Any,
) -> tuple[EvaluationResult, dict[str, np.ndarray]]:
    arrays = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    batch = validate_batch(logits=z.astype(dtype), labels=y, **arrays)
    plan = EvaluationPlan(
        batch.layout, tuple(LOSS.validate_python(x) for x in losses), tuple(METRIC.validate_python(x) for x in metrics)
    )
    evaluator = Evaluator(plan)
    evaluated = evaluator.evaluate(batch, Chunking(rows=chunk))
    return evaluated.result, evaluated.per_row


LOSS_CASES: list[tuple[dict[str, Any], str, str | None]] = [
    ({"name": "cross_entropy"}, "ce_mean", "ce"),
    ({"name": "cross_entropy", "weight": W_A}, "wce_mean_torch", "wce_per"),
    ({"name": "cross_entropy", "label_smoothing": 0.1}, "ls_mean", "ls_per"),
    ({"name": "cross_entropy", "label_smoothing": 0.1, "weight": W_A}, "lsw_mean_torch", "lsw_per"),
    ({"name": "nll"}, "ce_mean", "ce"),
    ({"name": "focal", "gamma": 0.5}, "focal_g0.5_mean", "focal_g0.5"),
    ({"name": "focal", "gamma": 1.0}, "focal_g1.0_mean", "focal_g1.0"),
    ({"name": "focal", "gamma": 2.0}, "focal_g2.0_mean", "focal_g2.0"),
    ({"name": "focal", "gamma": 2.0, "alpha": W_A}, "focal_g2_alphaW_mean", "focal_g2_alphaW"),
    ({"name": "z_loss", "a": 1.0, "b": 0.0}, "zloss_a1.0_b0.0_mean", "zloss_a1.0_b0.0"),
    ({"name": "z_loss", "a": 2.0, "b": 1.0}, "zloss_a2.0_b1.0_mean", "zloss_a2.0_b1.0"),
    ({"name": "z_loss", "a": 0.5, "b": 2.0}, "zloss_a0.5_b2.0_mean", "zloss_a0.5_b2.0"),
    ({"name": "ldr_kl", "lam": 1.0, "margin": 0.0}, "ldr_raw_lam1.0_c0.0_mean", "ldr_raw_lam1.0_c0.0"),
    ({"name": "ldr_kl", "lam": 1.0, "margin": 1.0}, "ldr_raw_lam1.0_c1.0_mean", "ldr_raw_lam1.0_c1.0"),
    ({"name": "ldr_kl", "lam": 10.0, "margin": 0.1}, "ldr_raw_lam10.0_c0.1_mean", "ldr_raw_lam10.0_c0.1"),
    ({"name": "ldr_kl", "lam": 0.5, "margin": 1.0}, "ldr_raw_lam0.5_c1.0_mean", "ldr_raw_lam0.5_c1.0"),
    (
        {"name": "ldr_kl", "lam": 10.0, "margin": 0.1, "transform": "reference"},
        "ldr_ref_lam10.0_c0.1_mean",
        "ldr_ref_lam10.0_c0.1",
    ),
    (
        {"name": "ldr_kl", "lam": 1.0, "margin": 1.0, "transform": "reference"},
        "ldr_ref_lam1.0_c1.0_mean",
        "ldr_ref_lam1.0_c1.0",
    ),
    (
        {"name": "aldr_kl", "lam0": 10.0, "alpha": 2.0, "margin": 0.1, "transform": "reference"},
        "aldr_step1_mean",
        "aldr_step1_loss",
    ),
    (
        {"name": "aldr_kl", "lam0": 1.0, "alpha": 2.0, "margin": 0.1, "transform": "reference"},
        "aldr_lam1_step1_mean",
        "aldr_lam1_step1_loss",
    ),
    *[
        ({"name": "comp_sum", "tau": t}, f"compsum_tau{t}_mean", f"compsum_tau{t}")
        for t in (0.0, 0.5, 1.0, 1.5, 1.7, 2.0)
    ],
    ({"name": "gce", "q": 0.7}, "gce_q0.7_mean", "gce_q0.7"),
    ({"name": "gce", "q": 0.5}, "gce_q0.5_mean", "gce_q0.5"),
    ({"name": "gce", "q": 0.7, "k": 0.5}, "gce_trunc_mean", "gce_trunc_q0.7_k0.5"),
    ({"name": "mae"}, "compsum_tau2.0_mean", "compsum_tau2.0"),
    ({"name": "sum_exp"}, "compsum_tau0.0_mean", "compsum_tau0.0"),
    ({"name": "dice", "alpha": 0.01, "gamma": 1.0}, "dice_a0.01_s1.0_sqTrue_mean", "dice_a0.01_s1.0_sqTrue"),
    ({"name": "dice", "alpha": 0.1, "gamma": 1.0}, "dice_a0.1_s1.0_sqTrue_mean", "dice_a0.1_s1.0_sqTrue"),
    ({"name": "stablemax_ce"}, "stablemax_ce_mean", "stablemax_ce"),
    ({"name": "taylor_softmax_ce", "order": 2}, "taylor_loss_mean", "taylor_loss"),
    ({"name": "hinge_crammer_singer"}, "cs_hinge_mean", "cs_hinge"),
    ({"name": "hinge_weston_watkins"}, "ww_hinge_mean", "ww_hinge"),
    ({"name": "kd", "temperature": 1.0}, "kd_T1.0_kl_batchmean_T2", None),
    ({"name": "kd", "temperature": 4.0}, "kd_T4.0_kl_batchmean_T2", None),
    ({"name": "nkd", "temperature": 1.0, "gamma": 1.5}, "nkd_t1_g1.5", None),
    ({"name": "nkd", "temperature": 4.0, "gamma": 1.5}, "nkd_t4_g1.5", None),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("spec", "mean_key", "rows_key"), LOSS_CASES, ids=[c[1] for c in LOSS_CASES])
def test_loss_matches_golden(spec: dict[str, Any], mean_key: str, rows_key: str | None, dtype: type) -> None:
    golden = load_golden("losses_4x3.json")
    result, rows = evaluate(Z_A, Y_A, [spec], [], dtype, teacher_logits=ZT_A)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype is np.float64 else {"rtol": F32_RTOL, "atol": 1e-6}
    np.testing.assert_allclose(result.losses[spec["name"]], golden[mean_key], **tol)
    if rows_key is not None:
        np.testing.assert_allclose(rows[f"loss.{spec['name']}.row"], golden[rows_key], **tol)


def test_squared_hinge_sums_over_classes_and_averages_over_rows() -> None:
    golden = load_golden("losses_4x3.json")
    result, rows = evaluate(Z_A, Y_A, [{"name": "squared_hinge"}], [])
    np.testing.assert_allclose(rows["loss.squared_hinge.row"], golden["ovr_l2svm_per"], rtol=1e-12)
    np.testing.assert_allclose(result.losses["squared_hinge"], golden["ovr_l2svm_sum"] / 4, rtol=1e-12)


@pytest.mark.parametrize(("weight", "key"), [(None, "softCE_mean"), (W_A, "softCE_w_mean_torch")])
def test_soft_target_cross_entropy(weight: list[float] | None, key: str) -> None:
    golden = load_golden("losses_4x3.json")
    spec: dict[str, Any] = {"name": "cross_entropy", **({"weight": weight} if weight else {})}
    result, _ = evaluate(Z_A, None, [spec], [], targets=Q_A)
    np.testing.assert_allclose(result.losses["cross_entropy"], golden[key], rtol=1e-9)


METRIC_CASES: list[tuple[dict[str, Any], str]] = [
    ({"name": "accuracy"}, "accuracy"),
    ({"name": "nll"}, "nll"),
    ({"name": "brier"}, "brier_mc"),
    *[
        ({"name": "ece", "bins": b, "norm": n}, f"ece_uniform_B{b}_{n}")
        for b in (3, 5, 10, 15)
        for n in ("l1", "l2", "max")
    ],
    *[({"name": "mce", "bins": b}, f"ece_uniform_B{b}_max") for b in (3, 5, 10, 15)],
    *[({"name": "ece", "bins": b, "binning": "quantile"}, f"ace_tensorsplit_B{b}") for b in (2, 3, 4)],
    *[
        ({"name": "ece", "bins": b, "binning": "quantile", "norm": "max"}, f"ace_tensorsplit_B{b}_max")
        for b in (2, 3, 4)
    ],
    *[({"name": "classwise_ece", "bins": b}, f"classwise_ece_B{b}_mean") for b in (5, 10, 15)],
    ({"name": "aurc"}, "aurc_mean"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("data", "golden_file"),
    [((Z_A, Y_A), "calibration_metrics_4x3.json"), ((Z_B, Y_B), "calibration_metrics_10x3.json")],
    ids=["A", "B"],
)
@pytest.mark.parametrize(("spec", "key"), METRIC_CASES, ids=[c[1] for c in METRIC_CASES])
def test_metric_matches_golden(
    spec: dict[str, Any], key: str, data: tuple[np.ndarray, np.ndarray], golden_file: str, dtype: type
) -> None:
    golden = load_golden(golden_file)
    result, _ = evaluate(data[0], data[1], [], [spec], dtype)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype is np.float64 else {"rtol": F32_RTOL, "atol": 1e-6}
    np.testing.assert_allclose(result.metrics[spec["name"]], golden[key], **tol)


@pytest.mark.parametrize(
    ("z", "y", "relplot", "exact"),
    [(Z_A, Y_A, 0.1872210809, 0.1878115801), (Z_B, Y_B, 0.1276086252, 0.1280568470)],
    ids=["A", "B"],
)
def test_smooth_ece_matches_relplot_and_the_exact_integral(
    z: np.ndarray, y: np.ndarray, relplot: float, exact: float
) -> None:
    result, _ = evaluate(z, y, [], [{"name": "smooth_ece"}])
    assert abs(result.metrics["smooth_ece"] - relplot) < 2e-3  # the spec's tolerance against relplot
    assert abs(result.metrics["smooth_ece"] - exact) < 1e-6


def test_reliability_table_matches_the_spec_bins() -> None:
    """§4.2 per-bin check, B = 15: bin 5 {0.3333}, bin 11 {0.7856, 0.7361}, bin 13 {0.8962}."""
    result, _ = evaluate(Z_A, Y_A, [], [{"name": "ece"}])
    filled = {i: b for i, b in enumerate(result.reliability) if b["count"]}
    assert sorted(filled) == [5, 11, 13]
    assert filled[11]["count"] == 2 and filled[11]["accuracy"] == 0.5
    np.testing.assert_allclose(filled[11]["confidence"], 0.7608608795, rtol=1e-9)  # type: ignore[arg-type]
    np.testing.assert_allclose(filled[13]["confidence"], 0.8961912281, rtol=1e-9)  # type: ignore[arg-type]
    assert filled[13]["accuracy"] == 1.0
    assert result.reliability[0] == {"lower": 0.0, "upper": 1 / 15, "count": 0.0, "confidence": None, "accuracy": None}


def test_pinned_binning_convention_on_vector_e() -> None:
    """api.md pins left-closed bins with the last one closed: vector E (§4.2) gives ECE 0.28, MCE 0.70.

    Rows are built so that the top-label confidence is E's p and correctness is E's y (C = 4)."""
    p = np.array([0.3, 0.5, 0.5, 0.7, 1.0])
    correct = np.array([1, 1, 1, 0, 0])
    probs = np.column_stack([p, *([(1 - p) / 3] * 3)])
    labels = np.where(correct == 1, 0, 1)
    batch = validate_batch(probabilities=probs, labels=labels)
    specs = (METRIC.validate_python({"name": "ece", "bins": 2}), METRIC.validate_python({"name": "mce", "bins": 2}))
    evaluator = Evaluator(EvaluationPlan(batch.layout, (), specs))
    metrics = evaluator.evaluate(batch, Chunking(rows=2)).result.metrics
    np.testing.assert_allclose([metrics["ece"], metrics["mce"]], [0.28, 0.70], rtol=1e-12)


def test_large_logits_do_not_overflow() -> None:
    result, _ = evaluate(np.array([[1000.0, 999.0, -1000.0]]), np.array([0]), [{"name": "cross_entropy"}], [])
    np.testing.assert_allclose(result.losses["cross_entropy"], -np.log(0.7310585786), rtol=1e-9)

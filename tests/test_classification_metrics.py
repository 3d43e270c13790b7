"""The classic classification metrics (precision, recall, f1, balanced_accuracy, mcc, cohen_kappa) against
scikit-learn on random inputs: float32 and float64, C = 2…20, with and without sample weights, classes
never predicted and classes without rows, chunked and one-shot; a binary threshold; 422s."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from app.core.chunking import Chunking
from app.core.errors import InputError
from app.core.evaluation import EvaluationPlan, Evaluator, check_plan, validate_batch
from tests.test_core_golden import METRIC, evaluate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's: classes absent on one side

AVERAGES = ("macro", "micro", "weighted", "none")
SCORES = {"precision": sk.precision_score, "recall": sk.recall_score, "f1": sk.f1_score}


def problem(seed: int, n: int, classes: int, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits whose argmax avoids ties, labels over the first classes only (the last never occurs), and
    the predictions as the graph makes them: argmax of the logits in their dtype."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, classes)) * 2
    z[:, 0] += 1.5  # class 0 predicted often, some classes never
    y = rng.integers(0, max(1, classes - 1), size=n)
    z = z.astype(dtype)
    return z, y, np.argmax(z, axis=1)


def oracle(name: str, y: np.ndarray, pred: np.ndarray, classes: int, weight: np.ndarray | None, **p: Any) -> Any:
    """scikit-learn's value: a number, the C values of `average: none`, or the confusion matrix."""
    labels = list(range(classes))
    if name in SCORES:
        average = p.get("average", "macro")
        extra = {"pos_label": 1} if average == "binary" else {"labels": labels}
        sk_average = None if average == "none" else average
        return SCORES[name](y, pred, average=sk_average, sample_weight=weight, zero_division=0, **extra)
    if name == "confusion_matrix":
        return sk.confusion_matrix(y, pred, labels=labels, sample_weight=weight)
    if name == "balanced_accuracy":
        return float(sk.balanced_accuracy_score(y, pred, sample_weight=weight))
    if name == "mcc":
        return float(sk.matthews_corrcoef(y, pred, sample_weight=weight))
    return float(sk.cohen_kappa_score(y, pred, labels=labels, sample_weight=weight))


SPECS: list[dict[str, Any]] = [
    *({"name": n, "average": a, "key": f"{n}_{a}"} for n in SCORES for a in AVERAGES),
    {"name": "balanced_accuracy"},
    {"name": "mcc"},
    {"name": "cohen_kappa"},
    {"name": "confusion_matrix"},
]


# what every oracle test draws: the data's seed and dtype, whether rows are weighted, the chunk size
DRAWN = {
    "seed": st.integers(0, 10_000),
    "dtype": st.sampled_from([np.float32, np.float64]),
    "weighted": st.booleans(),
    "chunk": st.integers(1, 64),
}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 300), classes=st.integers(2, 20), **DRAWN)
def test_every_metric_equals_scikit_learn(
    seed: int, n: int, classes: int, dtype: type, weighted: bool, chunk: int
) -> None:
    z, y, pred = problem(seed, n, classes, dtype)
    # the weights as the graph reads them: in the logits' dtype
    weight = np.random.default_rng(seed + 1).uniform(0.1, 3.0, n).astype(dtype) if weighted else None
    arrays = {"sample_weight": weight} if weight is not None else {}
    result, _ = evaluate(z, y, [], SPECS, dtype, chunk=chunk, **arrays)
    whole, _ = evaluate(z, y, [], SPECS, dtype, chunk=n, **arrays)
    for spec in SPECS:
        key = spec.get("key", spec["name"])
        params = {k: v for k, v in spec.items() if k not in ("name", "key")}
        want = oracle(spec["name"], y, pred, classes, weight, **params)
        # counts are sums of weights: exact for unit weights, to float64 rounding of n terms otherwise
        np.testing.assert_allclose(result.metrics[key], want, rtol=1e-10, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(result.metrics[key], whole.metrics[key], rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_threshold_and_average(dtype: type) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 2)).astype(dtype)
    y = rng.integers(0, 2, 400)
    p1 = 1 / (1 + np.exp(-(z[:, 1].astype(np.float64) - z[:, 0])))
    keep = np.abs(p1 - 0.3) > 1e-3  # away from the threshold: float32 rounding cannot move a row across
    z, y, p1 = z[keep], y[keep], p1[keep]
    pred = (p1 >= 0.3).astype(int)
    specs = [
        {"name": "f1", "average": "binary", "threshold": 0.3},
        {"name": "precision", "average": "binary", "threshold": 0.3, "key": "precision_t"},
        {"name": "recall", "average": "binary", "key": "recall_argmax"},
        {"name": "mcc", "threshold": 0.3},
        {"name": "cohen_kappa", "threshold": 0.3},
        {"name": "balanced_accuracy", "threshold": 0.3},
        {"name": "accuracy", "threshold": 0.3},
    ]
    result, _ = evaluate(z, y, [], specs, dtype, chunk=50)
    assert result.metrics["f1"] == pytest.approx(sk.f1_score(y, pred), rel=1e-12)
    assert result.metrics["precision_t"] == pytest.approx(sk.precision_score(y, pred, zero_division=0), rel=1e-12)
    argmax = np.argmax(z, axis=1)
    assert result.metrics["recall_argmax"] == pytest.approx(sk.recall_score(y, argmax), rel=1e-12)
    assert result.metrics["mcc"] == pytest.approx(sk.matthews_corrcoef(y, pred), rel=1e-12)
    assert result.metrics["cohen_kappa"] == pytest.approx(sk.cohen_kappa_score(y, pred), rel=1e-12)
    assert result.metrics["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred), rel=1e-12)
    assert result.metrics["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), rel=1e-12)


def test_undefined_values_follow_scikit_learn() -> None:
    """One class everywhere: mcc is 0 and kappa undefined (NaN here, reported null by the API)."""
    z = np.tile([[3.0, 0.0, 0.0]], (6, 1))
    y = np.zeros(6, dtype=int)
    result, _ = evaluate(z, y, [], [{"name": "mcc"}, {"name": "cohen_kappa"}, {"name": "f1"}])
    assert result.metrics["mcc"] == 0.0 == sk.matthews_corrcoef(y, np.zeros(6, int))
    assert np.isnan(result.metrics["cohen_kappa"])
    assert result.metrics["f1"] == pytest.approx(1 / 3)  # class 0 perfect, classes 1 and 2 count 0


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "f1", "threshold": 0.5},
        {"name": "accuracy", "threshold": 0.5},
        {"name": "precision", "average": "binary"},
    ],
    ids=["threshold", "accuracy_threshold", "binary"],
)
def test_binary_only_parameters_are_refused_for_more_classes(spec: dict[str, Any]) -> None:
    z, y, _ = problem(0, 20, 3, np.float64)
    batch = validate_batch(logits=z, labels=y)
    with pytest.raises(InputError, match="C = 2"):
        check_plan(EvaluationPlan(batch.layout, (), (METRIC.validate_python(spec),)), batch.classes)


def test_over_http_each_is_answered_stored_and_refused_when_bad(client: TestClient) -> None:
    z, y, pred = problem(7, 60, 4, np.float64)
    metrics = ["f1", {"name": "precision", "average": "weighted"}, "mcc", "cohen_kappa", "balanced_accuracy", "roc_auc"]
    answer = client.post("/v1/evaluations", json={"logits": z.tolist(), "labels": y.tolist(), "metrics": metrics})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["metrics"]["f1"] == pytest.approx(oracle("f1", y, pred, 4, None), rel=1e-12)
    assert body["metrics"]["precision"] == pytest.approx(oracle("precision", y, pred, 4, None, average="weighted"))
    softmax = np.exp(z - z.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    assert body["metrics"]["roc_auc"] == pytest.approx(ranked_oracle("roc_auc", softmax, y, None, "macro"), rel=1e-9)
    stored = client.get(f"/v1/evaluations/{body['id']}").json()
    assert stored["metrics"] == body["metrics"]
    for bad, field in (
        ({"name": "f1", "average": "samples"}, "average"),
        ({"name": "f1", "threshold": 1.5}, "threshold"),
        ({"name": "mcc", "threshold": 0.5}, "threshold"),
    ):
        refused = client.post("/v1/evaluations", json={"logits": z.tolist(), "labels": y.tolist(), "metrics": [bad]})
        assert refused.status_code == 422, refused.text
        assert field in refused.text
    assert client.get("/v1/evaluations").json()["items"] == [stored]


def ranked_oracle(name: str, probs: np.ndarray, y: np.ndarray, weight: np.ndarray | None, average: str) -> float:
    """scikit-learn's binary score of p₁, or one-vs-rest per class averaged over the scorable classes."""
    score = sk.roc_auc_score if name == "roc_auc" else sk.average_precision_score
    w = np.ones(len(y)) if weight is None else weight.astype(np.float64)  # prevalence summed in float64
    values, prevalence = [], []
    for c in (1,) if probs.shape[1] == 2 else range(probs.shape[1]):
        positive = y == c
        if w[positive].sum() > 0 and (w[~positive].sum() > 0 or name == "average_precision"):
            values.append(score(positive, probs[:, c], sample_weight=weight))
            prevalence.append(w[positive].sum())
    if not values:
        return float("nan")
    return float(np.average(values, weights=prevalence if average == "weighted" else None))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(6, 200), classes=st.integers(2, 12), ties=st.booleans(), **DRAWN)
def test_ranking_metrics_equal_scikit_learn(
    seed: int, n: int, classes: int, dtype: type, weighted: bool, ties: bool, chunk: int
) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(classes), size=n)
    if ties:  # heavy ties: few distinct scores
        p = np.round(p * 4) + 1e-3
        p /= p.sum(1, keepdims=True)
    p = p.astype(dtype)
    y = rng.integers(0, classes, size=n)
    weight = rng.uniform(0.1, 3.0, n).astype(dtype) if weighted else None
    arrays = {"sample_weight": weight} if weight is not None else {}
    specs = [
        {"name": m, "average": a, "key": f"{m}_{a}"}
        for m in ("roc_auc", "average_precision")
        for a in ("macro", "weighted")
    ]
    batch = validate_batch(probabilities=p, labels=y, **arrays)
    plan = EvaluationPlan(batch.layout, (), tuple(METRIC.validate_python(s) for s in specs))
    result = Evaluator(plan).evaluate(batch, Chunking(rows=chunk)).result
    probs = p.astype(np.float64)  # the graph reads the given probabilities, widened to float64
    for spec in specs:
        want = ranked_oracle(spec["name"], probs, y, weight, spec["average"])
        np.testing.assert_allclose(
            result.metrics[spec["key"]], want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=spec["key"]
        )


def test_a_ranking_metric_with_no_scorable_class_is_null() -> None:
    z, y = np.array([[2.0, 0.0], [1.0, 0.0]]), np.array([0, 0])
    result, _ = evaluate(z, y, [], [{"name": "roc_auc"}, {"name": "average_precision"}])
    assert np.isnan(result.metrics["roc_auc"])  # no positive for p1: reported null by the API
    assert np.isnan(result.metrics["average_precision"])  # scikit-learn answers 0 with a warning
    all_positive, _ = evaluate(z, 1 - y, [], [{"name": "average_precision"}])
    assert all_positive.metrics["average_precision"] == 1.0 == sk.average_precision_score([1, 1], [0.1, 0.3])


def test_list_valued_metrics_are_answered_stored_listed_and_not_gated(client: TestClient) -> None:
    """`confusion_matrix` and `average: none` answer lists (api.md), stored apart from the numbers; a gate
    rule on one is a 422 naming the rule; in a slice each group has its own matrix."""
    z, y, pred = problem(11, 80, 3, np.float64)
    group = np.where(np.arange(80) % 2 == 0, "even", "odd")
    metrics = ["confusion_matrix", {"name": "recall", "average": "none"}, "f1"]
    body = {"logits": z.tolist(), "labels": y.tolist(), "metrics": metrics, "slices": {"parity": group.tolist()}}
    answer = client.post("/v1/evaluations", json=body)
    assert answer.status_code == 201, answer.text
    got = answer.json()
    assert got["metrics"]["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert got["metrics"]["recall"] == pytest.approx(oracle("recall", y, pred, 3, None, average="none").tolist())
    odd = group == "odd"
    want_odd = sk.confusion_matrix(y[odd], pred[odd], labels=[0, 1, 2]).tolist()
    assert got["slices"]["parity"]["odd"]["metrics"]["confusion_matrix"] == want_odd
    stored = client.get(f"/v1/evaluations/{got['id']}").json()
    assert stored["metrics"] == got["metrics"] and stored["slices"] == got["slices"]
    listed = client.get("/v1/evaluations").json()["items"]
    assert next(e for e in listed if e["id"] == got["id"])["metrics"] == got["metrics"]
    other = client.post("/v1/evaluations", json={**body, "logits": (z * 0.5).tolist()}).json()
    for rule in (
        {"metric": "confusion_matrix", "op": "max", "value": 1.0},
        {"metric": "recall", "op": "max_decrease_abs", "value": 0.1, "slice": {"parity": "odd"}},
    ):
        refused = client.post("/v1/gates", json={"candidate": other["id"], "baseline": got["id"], "rules": [rule]})
        assert refused.status_code == 422 and "rules[0].metric" in refused.text, refused.text
    fine = {"metric": "f1", "op": "max_decrease_abs", "value": 1.0, "slice": {"parity": "odd"}}
    assert (
        client.post("/v1/gates", json={"candidate": other["id"], "baseline": got["id"], "rules": [fine]}).status_code
        == 201
    )


def test_the_unit_weight_float32_curve_equals_the_sorted_one() -> None:
    """The packed-key sort (score bits above the positive flag) gives the argsort curve exactly, with heavy
    ties, zeros of both signs and subnormals among the scores."""
    from app.core import classification

    rng = np.random.default_rng(8)
    score = rng.choice(np.array([0.0, -0.0, 1e-45, 0.25, 0.5, 0.5000001, 1.0], np.float32), 5000)
    score[:2000] = rng.random(2000).astype(np.float32)
    positive = rng.random(5000) < 0.3
    fast = classification._unit_curve(score, positive)
    order = np.argsort(-score.astype(np.float64) - 0.0, kind="stable")
    ranked, flags = score[order] + np.float32(0), positive[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp = np.cumsum(flags)[last].astype(np.float64)
    np.testing.assert_array_equal(fast[0], np.r_[0.0, tp])
    np.testing.assert_array_equal(fast[1], np.r_[0.0, last + 1 - tp])

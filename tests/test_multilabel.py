"""Multi-label and extreme evaluation (api.md, "Multi-label, extreme, cosine-margin and bag-level
evaluation"): every metric and loss against an independent numpy oracle written from the formulas in
api.md, and scikit-learn (ndcg_score, f1_score, hamming_loss, accuracy_score) and torch
(binary_cross_entropy_with_logits, when installed) where they coincide; float32 and float64; JSON label
sets, multipart CSR and dense multi-hot targets give one answer; chunked equals one-shot; the gate's
bootstrap resamples the stored per-row values; bad input is a 422 naming the field."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, ndcg_score

from app.core.chunking import Chunking
from app.core.evaluation import EvaluationPlan, Evaluator, validate_multilabel
from app.core.losses import LOSSES
from app.core.metrics import METRICS
from tests.test_api_bad_input import assert_problem

N, C, K, BINS = 40, 9, 3, 15
A, B, N_TRAIN = 0.55, 1.5, 1000
METRIC_NAMES = ["precision_at_k", "recall_at_k", "ndcg_at_k", "psp_at_k", "psndcg_at_k"]
THRESHOLDED = ["hamming_loss", "micro_f1", "macro_f1", "subset_accuracy"]
LOSS_NAMES = ["bce", "softmax_multilabel", "decoupled_softmax"]


def data(seed: int = 0, n: int = N, c: int = C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits away from the discontinuities (σ(z) = 0.5, uniform bin edges of σ, ties in the ranking), a
    multi-hot truth with at least one positive per row, and training label counts."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2
    sigma = 1 / (1 + np.exp(-z))
    near_edge = np.abs(sigma * BINS - np.round(sigma * BINS)) < 1e-3
    z = np.where(near_edge | (np.abs(z) < 1e-3), z + 0.01, z)
    truth = (rng.random((n, c)) < 0.3).astype(np.float64)
    truth[np.arange(n), rng.integers(0, c, n)] = 1.0
    return z, truth, rng.integers(0, 50, c).astype(np.float64)


def csr(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sets = [np.flatnonzero(row) for row in truth]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    return np.concatenate(sets).astype(np.int64), offsets


def oracle(z: np.ndarray, y: np.ndarray, freq: np.ndarray, k: int, w: np.ndarray | None = None) -> dict[str, float]:
    """api.md's formulas in numpy (float64), weighted means over rows."""
    z, w = z.astype(np.float64), np.ones(len(z)) if w is None else w
    mean = lambda v: float(np.sum(w * v) / np.sum(w))  # noqa: E731
    top = np.argsort(-z, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(y, top, 1)
    positives = y.sum(1)
    discount = 1 / np.log2(np.arange(2, k + 2))
    ideal = np.array([discount[: int(min(k, p))].sum() for p in positives])
    inverse = 1 + (np.log(N_TRAIN) - 1) * (B + 1) ** A * (freq + B) ** -A
    gains, best = hits * inverse[top], -np.sort(-(y * inverse), axis=1)[:, :k]
    sigma = 1 / (1 + np.exp(-z))
    predicted = (sigma >= 0.5).astype(np.float64)
    tp, fp, fn = [(a * w[:, None]).sum(0) for a in (predicted * y, predicted * (1 - y), (1 - predicted) * y)]
    f1 = lambda t, p, n: 2 * t / (2 * t + p + n) if 2 * t + p + n > 0 else 0.0  # noqa: E731
    eces = []
    for label in range(z.shape[1]):
        bins = np.minimum(np.floor(sigma[:, label] * BINS), BINS - 1)
        gap = sum(abs(np.sum(w[bins == b] * (y[bins == b, label] - sigma[bins == b, label]))) for b in range(BINS))
        eces.append(gap / w.sum())
    negatives = np.where(y > 0, -np.inf, z)
    lse_negatives = np.log(np.exp(negatives - negatives.max(1, keepdims=True)).sum(1)) + negatives.max(1)
    return {
        "precision_at_k": mean(hits.sum(1) / k),
        "recall_at_k": mean(hits.sum(1) / positives),
        "ndcg_at_k": mean((hits * discount).sum(1) / ideal),
        "psp_at_k": mean(gains.sum(1)) / mean(best.sum(1)),
        "psndcg_at_k": mean((gains * discount).sum(1) / ideal) / mean((best * discount).sum(1) / ideal),
        "hamming_loss": mean((predicted != y).mean(1)),
        "micro_f1": f1(tp.sum(), fp.sum(), fn.sum()),
        "macro_f1": float(np.mean([f1(*cell) for cell in zip(tp, fp, fn, strict=True)])),
        "subset_accuracy": mean((predicted == y).all(1)),
        "multilabel_ece": float(np.mean(eces)),
        "bce": mean((np.logaddexp(0, z) - y * z).mean(1)),
        "softmax_multilabel": mean(np.log(np.exp(z).sum(1)) - (y * z).sum(1) / positives),
        "decoupled_softmax": mean((y * (np.logaddexp(z, lse_negatives[:, None]) - z)).sum(1) / positives),
    }


def terms(k: int = K) -> dict[str, Any]:
    return {
        "metrics": [{"name": n, "k": k} for n in METRIC_NAMES] + THRESHOLDED + ["multilabel_ece"],
        "losses": LOSS_NAMES,
        "n_train": N_TRAIN,
    }


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def assert_matches(answer: dict[str, Any], expected: dict[str, float], tolerance: float) -> None:
    for name, value in expected.items():
        got = answer["losses"].get(name, answer["metrics"].get(name))
        assert got == pytest.approx(value, rel=tolerance, abs=tolerance), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_term_matches_the_oracle_over_json_and_multipart(client: TestClient, dtype: type) -> None:
    z, y, freq = data()
    z = z.astype(dtype)
    expected = oracle(z, y, freq, K)
    tolerance = 1e-9 if dtype == np.float64 else 2e-5
    lists = [np.flatnonzero(row).tolist() for row in y]
    body = {"task": "multilabel", "logits": encode_tensor_object(z), "label_sets": lists,
            "label_frequencies": freq.tolist(), **terms()}  # fmt: skip
    as_json = client.post("/v1/evaluations", json=body)
    assert as_json.status_code == 201, as_json.text
    assert_matches(as_json.json(), expected, tolerance)
    indices, offsets = csr(y)
    options = {"task": "multilabel", **terms()}
    files = {
        "request": (None, json.dumps(options), "application/json"),
        "logits": ("logits.npy", npy(z)),
        "label_sets.indices": ("i.npy", npy(indices)),
        "label_sets.offsets": ("o.npy", npy(offsets)),
        "label_frequencies": ("f.npy", npy(freq.astype(dtype))),
    }
    as_parts = client.post("/v1/evaluations", files=files)
    assert as_parts.status_code == 201, as_parts.text
    dense = client.post("/v1/evaluations", json={**body, "label_sets": None, "targets": y.tolist()})
    assert dense.status_code == 201, dense.text
    for other in (as_parts.json(), dense.json()):
        assert other["losses"] == as_json.json()["losses"] and other["metrics"] == as_json.json()["metrics"]
    assert as_parts.json()["dataset_fingerprint"] == as_json.json()["dataset_fingerprint"]


def test_scikit_learn_and_torch_agree_where_they_coincide(client: TestClient) -> None:
    z, y, _ = data(1)
    metrics = [{"name": "ndcg_at_k", "k": K}, "hamming_loss", "micro_f1", "macro_f1", "subset_accuracy"]
    body = {"task": "multilabel", "logits": z.tolist(), "targets": y.tolist(), "metrics": metrics, "losses": ["bce"]}
    answer = client.post("/v1/evaluations", json=body).json()
    predicted = (z >= 0).astype(int)  # σ(z) ≥ 0.5
    assert answer["metrics"]["ndcg_at_k"] == pytest.approx(ndcg_score(y, z, k=K), rel=1e-12)
    assert answer["metrics"]["hamming_loss"] == pytest.approx(hamming_loss(y, predicted))
    assert answer["metrics"]["micro_f1"] == pytest.approx(f1_score(y, predicted, average="micro"))
    assert answer["metrics"]["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    assert answer["metrics"]["subset_accuracy"] == pytest.approx(accuracy_score(y, predicted))
    torch = pytest.importorskip("torch")
    reference = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y)).item()
    assert answer["losses"]["bce"] == pytest.approx(reference, rel=1e-12)


def test_weighted_rows_follow_the_weighted_oracle(client: TestClient) -> None:
    z, y, freq = data(2)
    w = np.random.default_rng(2).uniform(0.1, 3, N)
    body = {"task": "multilabel", "logits": z.tolist(), "targets": y.tolist(), "sample_weight": w.tolist(),
            "label_frequencies": freq.tolist(), **terms()}  # fmt: skip
    answer = client.post("/v1/evaluations", json=body)
    assert answer.status_code == 201, answer.text
    assert_matches(answer.json(), oracle(z, y, freq, K, w), 1e-9)


def _core_batch(z: np.ndarray, y: np.ndarray, freq: np.ndarray) -> tuple[Any, EvaluationPlan]:
    batch = validate_multilabel(logits=z, label_sets=csr(y), label_frequencies=freq, n_train=N_TRAIN)
    metrics = tuple(
        METRICS[n].spec(name=n, **({"k": K} if n in METRIC_NAMES else {}))
        for n in [*METRIC_NAMES, *THRESHOLDED, "multilabel_ece"]
    )
    return batch, EvaluationPlan(batch.layout, tuple(LOSSES[n].spec(name=n) for n in LOSS_NAMES), metrics)


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_chunked_equals_one_shot(rows: int, seed: int) -> None:
    z, y, freq = data(seed, n=25)
    batch, plan = _core_batch(z, y, freq)
    evaluator = Evaluator(plan)
    whole = evaluator.evaluate(batch).result
    chunked = evaluator.evaluate(batch, Chunking.blocks_of(rows)).result
    for name, value in {**whole.losses, **whole.metrics}.items():
        assert {**chunked.losses, **chunked.metrics}[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_wide_rows_travel_as_csr(client: TestClient) -> None:
    """100k labels: the label sets are a few indices per row, never a dense multi-hot in the body."""
    rng = np.random.default_rng(3)
    n, c = 6, 100_000
    z = rng.normal(size=(n, c)).astype(np.float32)
    sets = [rng.choice(c, 3, replace=False) for _ in range(n)]
    for row, labels in zip(z, sets, strict=True):
        row[labels[:2]] += 10  # two of three positives rank first
    indices = np.concatenate(sets)
    offsets = np.arange(0, 3 * n + 1, 3)
    files = {
        "request": (None, json.dumps({"task": "multilabel", "metrics": [{"name": "precision_at_k", "k": 2},
                                                                        {"name": "recall_at_k", "k": 2}]})),
        "logits": ("l.npy", npy(z)),
        "label_sets.indices": ("i.npy", npy(indices)),
        "label_sets.offsets": ("o.npy", npy(offsets)),
    }  # fmt: skip
    answer = client.post("/v1/evaluations", files=files)
    assert answer.status_code == 201, answer.text
    assert answer.json()["metrics"] == {"precision_at_k": 1.0, "recall_at_k": pytest.approx(2 / 3)}
    assert answer.json()["classes"] == c


def test_defaults_and_the_stored_rows_feed_a_gate(client: TestClient) -> None:
    noise, y, _ = data(4, c=4)
    z = 2 * (2 * y - 1) + noise  # informative: its negation is a worse model
    lists = [np.flatnonzero(row).tolist() for row in y]
    first = client.post("/v1/evaluations", json={"task": "multilabel", "logits": z.tolist(), "label_sets": lists})
    assert first.status_code == 201, first.text
    assert set(first.json()["losses"]) == {"bce"}
    assert set(first.json()["metrics"]) == {"precision_at_k", "ndcg_at_k", "hamming_loss", "multilabel_ece"}
    assert first.json()["metrics"]["ndcg_at_k"] == pytest.approx(ndcg_score(y, z, k=4))  # k = min(5, C)
    worse = client.post("/v1/evaluations", json={"task": "multilabel", "logits": (-z).tolist(), "label_sets": lists})
    gate = {"candidate": worse.json()["id"], "baseline": first.json()["id"], "significance": 0.9, "resamples": 200,
            "rules": [{"metric": "ndcg_at_k", "op": "max_decrease_abs", "value": 0.01},
                      {"metric": "bce", "op": "max_increase_abs", "value": 0.01}]}  # fmt: skip
    judged = client.post("/v1/gates", json=gate)
    assert judged.status_code == 201, judged.text
    rules = judged.json()["rules"]
    assert judged.json()["bootstrap"] == "paired" and judged.json()["verdict"] == "fail"
    for rule in rules:
        low, high = rule["interval"]
        assert low <= rule["delta"] <= high
    per_sample = client.get(f"/v1/evaluations/{first.json()['id']}", params={"per_sample": True}).json()["per_sample"]
    assert per_sample["bce"] == pytest.approx((np.logaddexp(0, z) - y * z).mean(1).tolist())


def test_bad_multilabel_input_is_a_422_naming_the_field(client: TestClient) -> None:
    z, y, freq = data(5)
    lists = [np.flatnonzero(row).tolist() for row in y]
    base = {"task": "multilabel", "logits": z.tolist()}
    indices, offsets = csr(y)

    def parts(i: np.ndarray, o: np.ndarray) -> dict[str, Any]:
        return {
            "request": (None, json.dumps({"task": "multilabel"})),
            "logits": ("l.npy", npy(z)),
            "label_sets.indices": ("i.npy", npy(i)),
            "label_sets.offsets": ("o.npy", npy(o)),
        }

    empty_row = [[], *lists[1:]]
    cases = [
        ({**base, "label_sets": [[C], *lists[1:]]}, "label_sets.indices"),
        ({**base, "label_sets": [[0, 0], *lists[1:]]}, "label_sets"),
        ({**base, "label_sets": empty_row}, "label_sets"),
        (
            {**base, "label_sets": empty_row, "metrics": ["hamming_loss"], "losses": ["softmax_multilabel"]},
            "label_sets",
        ),
        ({**base, "label_sets": lists, "metrics": [{"name": "precision_at_k", "k": C + 1}]}, "metrics"),
        ({**base, "targets": (y * 0.5).tolist()}, "targets"),
        ({**base, "label_sets": lists, "metrics": ["psp_at_k"]}, "label_frequencies"),
        ({**base, "label_sets": lists, "label_frequencies": freq[:3].tolist(), "n_train": 10}, "label_frequencies"),
        ({**base, "label_sets": lists, "metrics": ["accuracy"]}, "task"),
        ({**base, "label_sets": lists, "losses": ["cross_entropy"]}, "task"),
        ({**base, "label_sets": lists, "targets": y.tolist()}, "label_sets"),
        ({**base, "label_sets": lists, "labels": [0] * N}, "labels"),
        ({**base, "label_sets": lists, "calibrator_id": "x"}, "calibrator_id"),
        ({"task": "multilabel", "probabilities": [[0.5, 0.5]] * N, "label_sets": lists}, "probabilities"),
        ({"logits": z.tolist(), "labels": [0] * N, "metrics": ["precision_at_k"]}, "task"),
        ({"logits": z.tolist(), "labels": [0] * N, "label_sets": lists}, "label_sets"),
    ]
    for body, field in cases:
        assert_problem(client.post("/v1/evaluations", json=body), 422, field)
    bad_parts = [
        (offsets[::-1].copy(), "label_sets.offsets"),  # not starting at 0
        (np.concatenate([offsets[:2], offsets[1:2] - 1, offsets[3:]]), "label_sets.offsets"),  # decreasing
        (offsets[:-1], "label_sets.offsets"),  # N entries
        (np.concatenate([offsets[:-1], [offsets[-1] + 1]]), "label_sets.offsets"),  # not ending at nnz
    ]
    for bad_offsets, field in bad_parts:
        assert_problem(client.post("/v1/evaluations", files=parts(indices, bad_offsets)), 422, field)
    floats = parts(indices.astype(np.float64), offsets)
    assert_problem(client.post("/v1/evaluations", files=floats), 422, "label_sets.indices")
    assert client.get("/v1/evaluations").json()["items"] == []  # nothing half-stored


def test_ties_in_the_top_k_go_to_the_lower_label_index() -> None:
    """Every score 0 but label 1500's: the top 2 is (1500, 0) whatever the width, so only row 0 hits."""
    z = np.zeros((3, 2_000), np.float32)
    z[:, 1_500] = 1.0
    batch = validate_multilabel(logits=z, label_sets=(np.array([0, 1, 1_999]), np.array([0, 1, 2, 3])))
    plan = EvaluationPlan(batch.layout, (), (METRICS["precision_at_k"].spec(name="precision_at_k", k=2),))
    assert Evaluator(plan).evaluate(batch).result.metrics["precision_at_k"] == pytest.approx(1 / 6)

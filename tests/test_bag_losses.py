"""Bag-level losses (aggregate responses, Javanmard et al. 2024; api.md): `bags` [N] with `bag_targets`
[B, C]; bag_level_ce and instance_level_ce against a numpy oracle of their definitions in float32 and
float64, over JSON and multipart; bags whose rows span chunks give the one-shot number (the per-bag sums
merge by addition); labels are optional; bad input is a 422 naming the field."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax

from app.core.chunking import Chunking
from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
from app.core.losses import LOSSES
from tests.test_api_bad_input import assert_problem

N, C, BAGS = 48, 4, 6
LOSS_NAMES = ["bag_level_ce", "instance_level_ce"]


def data(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bags = np.concatenate([np.arange(BAGS), rng.integers(0, BAGS, n - BAGS)])  # every bag has a row
    rng.shuffle(bags)
    return rng.normal(size=(n, C)) * 2, bags, rng.dirichlet(np.ones(C), BAGS)


def oracle(z: np.ndarray, bags: np.ndarray, targets: np.ndarray, w: np.ndarray | None = None) -> dict[str, float]:
    w = np.ones(len(z)) if w is None else w
    p = softmax(z.astype(np.float64), axis=1)
    mean_p = np.stack([np.average(p[bags == b], axis=0, weights=w[bags == b]) for b in range(len(targets))])
    instance = -(targets[bags] * np.log(p)).sum(1)
    return {
        "bag_level_ce": float(np.mean(-(targets * np.log(mean_p)).sum(1))),
        "instance_level_ce": float(np.sum(w * instance) / np.sum(w)),
    }


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bag_losses_match_their_definitions_over_json_and_multipart(client: TestClient, dtype: type) -> None:
    z, bags, targets = data()
    z, targets = z.astype(dtype), targets.astype(dtype)
    tolerance = 1e-10 if dtype == np.float64 else 2e-5
    body = {"logits": encode_tensor_object(z), "bags": bags.tolist(), "bag_targets": encode_tensor_object(targets),
            "losses": LOSS_NAMES, "metrics": ["accuracy"]}  # fmt: skip
    as_json = client.post("/v1/evaluations", json=body)
    assert as_json.status_code == 201, as_json.text
    for name, value in oracle(z, bags, targets.astype(np.float64)).items():
        assert as_json.json()["losses"][name] == pytest.approx(value, rel=tolerance), name
    # without labels the metrics read each row's bag distribution as its soft target
    assert as_json.json()["metrics"]["accuracy"] == pytest.approx(np.mean(z.argmax(1) == targets[bags].argmax(1)))
    files = {
        "request": (None, json.dumps({"losses": LOSS_NAMES, "metrics": ["accuracy"]}), "application/json"),
        "logits": ("l.npy", npy(z)),
        "bags": ("b.npy", npy(bags.astype(np.int32))),
        "bag_targets": ("t.npy", npy(targets)),
    }
    as_parts = client.post("/v1/evaluations", files=files)
    assert as_parts.status_code == 201, as_parts.text
    assert as_parts.json()["losses"] == as_json.json()["losses"]


def test_labels_and_weights_go_with_bags(client: TestClient) -> None:
    z, bags, targets = data(1)
    labels = z.argmax(1)
    w = np.random.default_rng(1).uniform(0.2, 2, N)
    body = {"logits": z.tolist(), "labels": labels.tolist(), "sample_weight": w.tolist(), "bags": bags.tolist(),
            "bag_targets": targets.tolist(), "losses": LOSS_NAMES, "metrics": ["accuracy"],
            "per_sample": True}  # fmt: skip
    answer = client.post("/v1/evaluations", json=body)
    assert answer.status_code == 201, answer.text
    for name, value in oracle(z, bags, targets, w).items():
        assert answer.json()["losses"][name] == pytest.approx(value, rel=1e-10), name
    assert answer.json()["metrics"]["accuracy"] == 1.0  # the labels, not the bags, are the truth of the metrics
    assert set(answer.json()["per_sample"]) == {"instance_level_ce"}  # bag_level_ce has no per-row value


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 17), seed=st.integers(0, 10_000))
def test_bags_spanning_chunks_give_the_one_shot_number(rows: int, seed: int) -> None:
    z, bags, targets = data(seed, n=40)
    batch = validate_batch(logits=z, targets=targets[bags]).with_bags(bags, targets)
    plan = EvaluationPlan(batch.layout, tuple(LOSSES[n].spec(name=n) for n in LOSS_NAMES), ())
    evaluator = Evaluator(plan)
    whole = evaluator.evaluate(batch).result.losses
    chunked = evaluator.evaluate(batch, Chunking.blocks_of(rows)).result.losses
    for name, value in whole.items():
        assert chunked[name] == pytest.approx(value, rel=1e-12), name


def test_bad_bag_input_is_a_422_naming_the_field(client: TestClient) -> None:
    z, bags, targets = data(2)
    base = {"logits": z.tolist(), "bags": bags.tolist(), "bag_targets": targets.tolist(), "losses": LOSS_NAMES}
    unnormalised = targets.copy()
    unnormalised[0] *= 2
    cases = [
        ({**base, "bags": [BAGS, *bags[1:].tolist()]}, "bags"),
        ({**base, "bags": [-1, *bags[1:].tolist()]}, "bags"),
        ({**base, "bags": bags[:-1].tolist()}, "bags"),
        ({**base, "bag_targets": unnormalised.tolist()}, "bag_targets"),
        ({**base, "bag_targets": targets[:, :2].tolist()}, "bag_targets"),
        ({**base, "bag_targets": None}, "bag_targets"),  # the missing one is named
        ({**base, "bags": None}, "bags"),
        ({**base, "bag_targets": np.vstack([targets, targets[:1]]).tolist()}, "bags"),  # bag 6 has no rows
        ({"logits": z.tolist(), "labels": [0] * N, "losses": ["instance_level_ce"]}, "losses"),
        ({"task": "multilabel", "logits": z.tolist(), "targets": np.eye(C)[z.argmax(1)].tolist(),
          "bags": bags.tolist()}, "bags"),
    ]  # fmt: skip
    for body, field in cases:
        assert_problem(client.post("/v1/evaluations", json=body), 422, field)
    floats = {
        "request": (None, json.dumps({"losses": LOSS_NAMES})),
        "logits": ("l.npy", npy(z)),
        "bags": ("b.npy", npy(bags + 0.5)),
        "bag_targets": ("t.npy", npy(targets)),
    }
    assert_problem(client.post("/v1/evaluations", files=floats), 422, "bags")
    assert client.get("/v1/evaluations").json()["items"] == []

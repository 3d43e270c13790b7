"""Cosine-margin losses (api.md, "Multi-label, extreme, cosine-margin and bag-level evaluation"): normface,
cosface and arcface on `cosines`, or on `embeddings` with `class_weights` (L2-normalised by the service),
against a numpy oracle of their definitions (pytorch-metric-learning's CosFaceLoss and ArcFaceLoss
logits, m in radians here), in float32 and float64; metrics read the cosines as logits; bad input 422."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from caliper_client.wire import encode_tensor_object
from fastapi.testclient import TestClient
from scipy.special import log_softmax

from tests.test_api_bad_input import assert_problem

N, C, D = 64, 5, 8


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(C, D))
    labels = rng.integers(0, C, N)
    embeddings = weights[labels] + rng.normal(size=(N, D)) * 1.5
    return embeddings, weights, labels


def cosines_of(embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return np.clip(unit(embeddings) @ unit(weights).T, -1, 1)


def oracle(cos: np.ndarray, labels: np.ndarray, name: str, s: float, m: float = 0.0) -> float:
    cos = cos.astype(np.float64)
    rows = np.arange(len(labels))
    logits = s * cos
    cos_y = cos[rows, labels]
    if name == "cosface":
        logits[rows, labels] = s * (cos_y - m)
    elif name == "arcface":
        theta = np.arccos(np.clip(cos_y, -1, 1))
        logits[rows, labels] = np.where(theta <= math.pi - m, s * np.cos(theta + m), s * (cos_y - m * math.sin(m)))
    return float(-np.mean(log_softmax(logits, axis=1)[rows, labels]))


LOSSES: list[tuple[dict[str, Any], str, float, float]] = [
    ({"name": "normface"}, "normface", 30.0, 0.0),
    ({"name": "cosface", "m": 0.2}, "cosface", 30.0, 0.2),
    ({"name": "arcface"}, "arcface", 64.0, 0.5),
    ({"name": "arcface", "s": 16, "m": 2.9}, "arcface", 16.0, 2.9),  # θ_y beyond π − m for most rows
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_margin_losses_match_their_definitions(client: TestClient, dtype: type) -> None:
    embeddings, weights, labels = data()
    cos = cosines_of(embeddings, weights).astype(dtype)
    losses = [{**spec, "key": f"l{k}"} for k, (spec, *_) in enumerate(LOSSES)]
    body = {"cosines": encode_tensor_object(cos), "labels": labels.tolist(), "losses": losses, "metrics": ["accuracy"]}
    answer = client.post("/v1/evaluations", json=body)
    assert answer.status_code == 201, answer.text
    tolerance = 1e-10 if dtype == np.float64 else 2e-4
    for k, (_, name, s, m) in enumerate(LOSSES):
        assert answer.json()["losses"][f"l{k}"] == pytest.approx(oracle(cos, labels, name, s, m), rel=tolerance), name
    assert answer.json()["metrics"]["accuracy"] == pytest.approx(np.mean(cos.argmax(1) == labels))


def test_embeddings_with_class_weights_are_normalised_by_the_service(client: TestClient) -> None:
    embeddings, weights, labels = data(1)
    body = {"embeddings": (embeddings * 7).tolist(), "class_weights": (weights * 0.3).tolist(),
            "labels": labels.tolist(), "losses": [{"name": "cosface"}], "metrics": ["accuracy"]}  # fmt: skip
    answer = client.post("/v1/evaluations", json=body)
    assert answer.status_code == 201, answer.text
    expected = oracle(cosines_of(embeddings, weights), labels, "cosface", 30.0, 0.35)
    assert answer.json()["losses"]["cosface"] == pytest.approx(expected, rel=1e-10)


def test_bad_cosine_inputs_are_422s(client: TestClient) -> None:
    embeddings, weights, labels = data(2)
    cos = cosines_of(embeddings, weights)
    cases = [
        ({"cosines": (cos * 1.5).tolist(), "labels": labels.tolist()}, "cosines"),
        ({"cosines": cos.tolist(), "logits": cos.tolist(), "labels": labels.tolist()}, "cosines"),
        ({"embeddings": embeddings.tolist(), "class_weights": weights[:, :3].tolist(), "labels": labels.tolist()},
         "class_weights"),
        ({"logits": cos.tolist(), "labels": labels.tolist(), "losses": ["arcface"]}, "losses"),
    ]  # fmt: skip
    for body, field in cases:
        assert_problem(client.post("/v1/evaluations", json=body), 422, field)

"""Fused default evaluation (CE, NLL, Brier, accuracy, ECE) against numpy, torch CPU and the memory floor.

Targets (issue #2): wide rows ≤ 4× the floor, narrow rows ≤ 15× the floor, ≥ 3× faster than torch CPU.
Run: `make bench` or `.venv/bin/python -m bench.evaluate [--repeats 7]`.
"""

from __future__ import annotations

import argparse

import numpy as np
from pydantic import TypeAdapter

from app.config import Settings
from app.core.chunking import Chunking
from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
from app.core.losses import LossSpec
from app.core.metrics import MetricSpec
from bench.timing import median_seconds, report, sized

LOSSES = [{"name": "cross_entropy"}]
METRICS = [{"name": "accuracy"}, {"name": "nll"}, {"name": "brier"}, {"name": "ece", "bins": 15}]


def numpy_evaluation(z: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float]:
    """The straightforward numpy version of the same numbers."""
    m = z.max(axis=1, keepdims=True)
    shifted = z - m
    lse = np.log(np.exp(shifted).sum(axis=1))
    log_p = shifted - lse[:, None]
    p = np.exp(log_p)
    rows = np.arange(len(y))
    ce = -log_p[rows, y]
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    brier = (p**2).sum(axis=1) - 2 * p[rows, y] + 1
    idx = np.minimum((conf.astype(np.float64) * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, correct, bins) - np.bincount(idx, conf, bins))
    return {
        "ce": float(ce.mean()),
        "acc": float(correct.mean()),
        "brier": float(brier.mean()),
        "ece": float(gap.sum() / count.sum()),
    }


def torch_evaluation(torch: object, z: object, y: object, bins: int = 15) -> float:
    import torch as t

    logits, labels = z, y
    ce = t.nn.functional.cross_entropy(logits, labels)  # type: ignore[arg-type]
    p = t.softmax(logits, dim=1)  # type: ignore[arg-type]
    conf, pred = p.max(dim=1)
    correct = (pred == labels).double()
    brier = ((p - t.nn.functional.one_hot(labels, p.shape[1])) ** 2).sum(1).mean()  # type: ignore[arg-type]
    idx = t.clamp((conf.double() * bins).long(), max=bins - 1)
    count = t.bincount(idx, minlength=bins)
    gap = (t.bincount(idx, correct, bins) - t.bincount(idx, conf.double(), bins)).abs()
    return float(ce) + float(brier) + float(gap.sum() / count.sum())


def bench_size(n: int, c: int, repeats: int, chunk_size: int, chunk_bytes: int, torch: object | None) -> None:
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(n, c)) * 2).astype(np.float32)
    y = rng.integers(0, c, n)
    batch = validate_batch(logits=z, labels=y)
    plan = EvaluationPlan(
        batch.layout,
        tuple(TypeAdapter(LossSpec).validate_python(s) for s in LOSSES),
        tuple(TypeAdapter(MetricSpec).validate_python(m) for m in METRICS),
    )
    evaluator = Evaluator(plan)

    def caliper() -> None:
        evaluator.evaluate(batch, Chunking(chunk_size, chunk_bytes))

    rows = {
        "memory floor (numpy.sum)": median_seconds(lambda: z.sum(), repeats),
        "caliper fused graph": median_seconds(caliper, repeats),
        "numpy straightforward": median_seconds(lambda: numpy_evaluation(z, y), repeats),
    }
    if torch is not None:
        import torch as t

        tz, ty = t.from_numpy(z), t.from_numpy(y)
        rows["torch CPU"] = median_seconds(lambda: torch_evaluation(t, tz, ty), repeats)
    report(f"{n:,} x {c:,} float32 (median of {repeats})", rows, "memory floor (numpy.sum)")
    for other in ("torch CPU", "numpy straightforward"):
        if other in rows:
            print(f"  caliper speed-up over {other}: {rows[other] / rows['caliper fused graph']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=sized(7, 1))
    parser.add_argument("--chunk-size", type=int, default=Settings().chunk_size)
    parser.add_argument("--chunk-bytes", type=int, default=Settings().chunk_bytes)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    for n, c in ((sized(1_000_000, 3_000), 10), (sized(100_000, 2_000), sized(1_000, 20))):
        bench_size(n, c, args.repeats, args.chunk_size, args.chunk_bytes, torch)


if __name__ == "__main__":
    main()

"""Extreme multi-label ranking metrics.

P@1, P@3, P@5 and nDCG@5 of 2,000 rows × 200,000 labels float32 (the issue's 20,000 rows are 16 GB of
logits, more than this 2-core, 23 GB machine holds beside their copies; the per-row work is the same):
Caliper's fused evaluation graph (onnxruntime `TopK` per chunk of rows, CSR label sets scattered per
chunk, as the service runs it) against a numpy `argpartition` implementation and torch's CPU `topk`
(when the bench extra is installed) on the same arrays in the same run (target ≥ 2x the faster of them),
and the peak memory the graph adds beyond the inputs (bounded by the chunk, not by N × C).
Run: `.venv/bin/python -m bench.xmc` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import numpy as np

from app.core.evaluation import EvaluationPlan, Evaluator, validate_multilabel
from app.core.metrics import METRICS
from bench.timing import sized

KS = (1, 3, 5)


def data(rows: int, labels: int, per_row: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits with a few positives per row (CSR), the positives shifted up so the metrics are not ~0."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, labels), dtype=np.float32)
    indices = np.stack([rng.choice(labels, per_row, replace=False) for _ in range(rows)]).astype(np.int64)
    np.put_along_axis(logits, indices, np.take_along_axis(logits, indices, 1) + 3.0, axis=1)
    offsets = np.arange(0, rows * per_row + 1, per_row, dtype=np.int64)
    return logits, indices.ravel(), offsets


def with_numpy(logits: np.ndarray, indices: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
    """argpartition for the top 5, then a sort of those 5 (ties to the lower index, as the graph)."""
    top = np.argpartition(-logits, 5, axis=1)[:, :5]
    order = np.lexsort((top, -np.take_along_axis(logits, top, 1)), axis=1)
    return _scores(np.take_along_axis(top, order, 1), indices, offsets)


def with_torch(logits: np.ndarray, indices: np.ndarray, offsets: np.ndarray) -> dict[str, float] | None:
    try:
        import torch
    except ImportError:
        return None
    top = torch.topk(torch.from_numpy(logits), 5, dim=1).indices.numpy()
    return _scores(top, indices, offsets)


def _scores(top: np.ndarray, indices: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
    rows = len(offsets) - 1
    truth = indices.reshape(rows, -1)  # the bench's rows all have the same number of positives
    hits = (top[:, :, None] == truth[:, None, :]).any(2).astype(np.float64)
    discount = 1 / np.log2(np.arange(2, 7))
    ideal = discount[: min(5, truth.shape[1])].sum()
    scores = {f"p_{k}": float(hits[:, :k].sum(1).mean() / k) for k in KS}
    return scores | {"ndcg_5": float((hits * discount).sum(1).mean() / ideal)}


def with_caliper(logits: np.ndarray, indices: np.ndarray, offsets: np.ndarray) -> dict[str, float]:
    batch = validate_multilabel(logits=logits, label_sets=(indices, offsets))
    metrics = tuple(METRICS["precision_at_k"].spec(name="precision_at_k", k=k, key=f"p_{k}") for k in KS)
    metrics += (METRICS["ndcg_at_k"].spec(name="ndcg_at_k", k=5, key="ndcg_5"),)
    result = Evaluator(EvaluationPlan(batch.layout, (), metrics)).evaluate(batch, keep_rows=False).result
    return {key: float(value) for key, value in result.metrics.items()}  # type: ignore[arg-type]


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=sized(2_000, 50))
    parser.add_argument("--labels", type=int, default=sized(200_000, 2_000))
    parser.add_argument("--repeats", type=int, default=sized(3, 1))
    args = parser.parse_args()
    logits, indices, offsets = data(args.rows, args.labels)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_caliper, ours = best_of(lambda: with_caliper(logits, indices, offsets), args.repeats)
    added_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    t_numpy, by_numpy = best_of(lambda: with_numpy(logits, indices, offsets), args.repeats)
    t_torch, by_torch = best_of(lambda: with_torch(logits, indices, offsets), args.repeats)
    print(f"{args.rows:,} rows × {args.labels:,} labels float32 ({logits.nbytes / 2**30:.2f} GiB of logits)")
    print(f"caliper graph   {t_caliper:8.3f} s  {ours}")
    print(f"numpy           {t_numpy:8.3f} s  {by_numpy}  ratio {t_numpy / t_caliper:.2f}x")
    if by_torch is None:
        print("torch           not installed (pip install -e '.[bench]')")
        fastest = t_numpy
    else:
        print(f"torch topk      {t_torch:8.3f} s  {by_torch}  ratio {t_torch / t_caliper:.2f}x")
        fastest = min(t_numpy, t_torch)
    print(f"vs the faster peer: {fastest / t_caliper:.2f}x (target ≥ 2x); graph peak memory +{added_mb:.0f} MB")
    assert by_numpy == ours or all(abs(by_numpy[k] - ours[k]) < 1e-6 for k in ours)  # type: ignore[index]


if __name__ == "__main__":
    main()

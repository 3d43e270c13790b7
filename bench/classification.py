"""The classic classification metrics in one fused pass against scikit-learn on the same arrays.

f1 (macro), precision (weighted), balanced_accuracy, mcc, cohen_kappa and roc_auc (macro, one-vs-rest)
with the default set (accuracy, nll, brier, ece, mce) on 1M × 10 and 100k × 100 float32 logits:
Caliper's fused graph (one chunked pass; the confusion matrix and the kept probabilities are its states)
against scikit-learn's functions given the softmax and the argmax it needs (computed once, in numpy, and
timed with it), and torchmetrics' functional metrics on CPU tensors (softmax in torch, timed with them) when
torchmetrics is installed (it is not a dependency: `pip install torch==2.13.0 torchmetrics` for the CPU build).
Target (issue 27): ≥ 3× faster than the faster peer for the whole set.
Slices: the default set plus f1, roc_auc and (C = 10) confusion_matrix with 100 groups of one key (numbering
the groups included) against the same evaluation without slices, rows kept as a stored evaluation keeps them.
Target: ≤ 1.5×.
Run: `.venv/bin/python -m bench.classification [--repeats 3]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
from pydantic import TypeAdapter
from sklearn import metrics as sk

from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
from app.core.metrics import DEFAULT_METRICS, MetricSpec
from app.core.slices import Slices
from bench.timing import median_seconds, report, sized

CLASSIC = [
    {"name": "f1"},
    {"name": "precision", "average": "weighted"},
    {"name": "balanced_accuracy"},
    {"name": "mcc"},
    {"name": "cohen_kappa"},
    {"name": "roc_auc"},
]


def scikit_learn(z: np.ndarray, y: np.ndarray) -> None:
    """The same classic numbers from scikit-learn (softmax and argmax in numpy first)."""
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred = p.argmax(1)
    labels = np.arange(z.shape[1])
    sk.f1_score(y, pred, average="macro", labels=labels, zero_division=0)
    sk.precision_score(y, pred, average="weighted", labels=labels, zero_division=0)
    sk.balanced_accuracy_score(y, pred)
    sk.matthews_corrcoef(y, pred)
    sk.cohen_kappa_score(y, pred, labels=labels)
    sk.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)


def torchmetrics_set(z: np.ndarray, y: np.ndarray) -> None:
    """The same classic numbers from torchmetrics' functional API (macro recall is balanced accuracy)."""
    import torch
    from torchmetrics.functional import classification as tm

    c = z.shape[1]
    probs, target = torch.softmax(torch.from_numpy(z), dim=1), torch.from_numpy(y)
    tm.multiclass_f1_score(probs, target, c, average="macro")
    tm.multiclass_precision(probs, target, c, average="weighted")
    tm.multiclass_recall(probs, target, c, average="macro")
    tm.multiclass_matthews_corrcoef(probs, target, c)
    tm.multiclass_cohen_kappa(probs, target, c)
    tm.multiclass_auroc(probs, target, c, average="macro")


def compare(n: int, c: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    batch = validate_batch(logits=z, labels=y)
    adapter = TypeAdapter(MetricSpec)
    defaults = [{"name": m} for m in DEFAULT_METRICS]
    rows = {}
    for name, metrics in (
        ("caliper: default set", defaults),
        ("caliper: default + classic set", [*defaults, *CLASSIC]),
    ):
        evaluator = Evaluator(EvaluationPlan(batch.layout, (), tuple(adapter.validate_python(m) for m in metrics)))
        rows[name] = median_seconds(lambda e=evaluator: e.evaluate(batch, keep_rows=False), repeats)
    rows["scikit-learn: classic set"] = median_seconds(lambda: scikit_learn(z, y), repeats, warmup=0)
    if importlib.util.find_spec("torchmetrics") is not None:
        rows["torchmetrics: classic set"] = median_seconds(lambda: torchmetrics_set(z, y), repeats)
    report(f"{n:,} × {c} float32", rows, "scikit-learn: classic set")


def compare_slices(n: int, c: int, repeats: int) -> None:
    """100 groups against none; confusion_matrix joins where its answer fits (C = 10: per group C² = 100
    numbers; at C = 1,000 the 100 matrices would be 10⁸ numbers, which the service refuses)."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, c)).astype(np.float32)
    y, groups = rng.integers(0, c, n), rng.integers(0, 100, n)
    names = [*({"name": m} for m in DEFAULT_METRICS), CLASSIC[0], CLASSIC[-1]]
    names += [{"name": "confusion_matrix"}] if c <= 100 else []
    metrics = tuple(TypeAdapter(MetricSpec).validate_python(m) for m in names)
    plain = validate_batch(logits=z, labels=y)
    sliced_layout = plain.sliced(Slices.of({"g": groups}, n)).layout
    evaluators = {layout: Evaluator(EvaluationPlan(layout, (), metrics)) for layout in (plain.layout, sliced_layout)}

    def run(sliced: bool) -> None:
        batch = validate_batch(logits=z, labels=y)
        if sliced:
            batch = batch.sliced(Slices.of({"g": groups}, n))
        evaluators[batch.layout].evaluate(batch)

    rows = {
        "no slices": median_seconds(lambda: run(False), repeats),
        "100 slices": median_seconds(lambda: run(True), repeats),
    }
    report(f"{n:,} × {c} float32, " + " + ".join(m["name"] for m in names[len(DEFAULT_METRICS) :]), rows, "no slices")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=sized(3, 1))
    args = parser.parse_args()
    for n, c in ((sized(1_000_000, 3_000), 10), (sized(100_000, 2_000), sized(100, 20))):
        compare(n, c, args.repeats)
    for n, c in ((sized(1_000_000, 3_000), 10), (sized(100_000, 2_000), sized(1000, 20))):
        compare_slices(n, c, args.repeats)


if __name__ == "__main__":
    main()

"""An evaluation over a streamed source — a model's outputs, files, a Dask worker's window of them —
and the plan a request makes once the first chunk shows its layout and classes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from app.core.evaluation import (
    Batch,
    Evaluated,
    EvaluationPlan,
    EvaluationStage,
    EvaluationState,
    Evaluator,
    check_plan,
    check_positives,
    validate_batch,
    validate_multilabel,
)
from app.core.fold import Chunk, Span
from app.core.graph_context import InputLayout
from app.core.label_sets import LabelSets
from app.core.losses import DEFAULT_LOSSES, DEFAULT_MULTILABEL_LOSSES, LOSSES
from app.core.metrics import DEFAULT_METRICS, DEFAULT_METRICS_WIDE, DEFAULT_MULTILABEL_METRICS, METRICS, Ece
from app.core.runtime import SessionCache
from app.core.slices import Slices
from app.core.specs import TermSpec
from app.evaluation.schemas import EvaluationRequest

SLOTS = "slots"  # the given column of each row's slots beside a streamed source's chunks
Calibrate = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # a calibrator on a chunk's inputs


@cache
def default_terms(wide: bool) -> tuple[tuple[TermSpec, ...], tuple[TermSpec, ...]]:
    """The default losses and metrics (frozen specs, built once): top_k_accuracy joins when C > 5."""
    metrics = DEFAULT_METRICS_WIDE if wide else DEFAULT_METRICS
    return tuple(LOSSES[n].spec(name=n) for n in DEFAULT_LOSSES), tuple(METRICS[n].spec(name=n) for n in metrics)


@cache
def multilabel_terms(k: int) -> tuple[tuple[TermSpec, ...], tuple[TermSpec, ...]]:
    """The multilabel defaults (api.md): bce; precision_at_k, ndcg_at_k, hamming_loss, multilabel_ece, the
    ranking metrics at k = min(5, C) (an explicit k > C is refused)."""
    losses = tuple(LOSSES[n].spec(name=n) for n in DEFAULT_MULTILABEL_LOSSES)
    ranked = {"precision_at_k", "ndcg_at_k"}
    return losses, tuple(
        METRICS[n].spec(name=n, **({"k": k} if n in ranked else {})) for n in DEFAULT_MULTILABEL_METRICS
    )


def make_plan(request: EvaluationRequest, batch: Batch) -> EvaluationPlan:
    if batch.layout.task == "multilabel":
        default_losses, default_metrics = multilabel_terms(min(5, batch.classes))
    else:
        default_losses, default_metrics = default_terms(batch.classes > 5)
    losses = request.losses if request.losses is not None else default_losses
    metrics = request.metrics if request.metrics is not None else default_metrics
    uniform = [m.bins for m in metrics if isinstance(m, Ece) and m.binning == "uniform"]
    plan = EvaluationPlan(
        batch.layout, tuple(losses), tuple(metrics), uniform[0] if uniform else request.reliability_bins
    )
    check_plan(plan, batch.classes, batch.slices, batch)
    return plan


@dataclass(frozen=True)
class MultilabelTruth:
    """What a streamed multilabel evaluation is given whole beside its streamed logits: the label sets as
    CSR (each chunk takes its rows' slice; absent when multi-hot `targets` stream instead), and the
    propensity-scored metrics' training counts."""

    label_sets: tuple[np.ndarray, np.ndarray] | None = None
    label_frequencies: np.ndarray | None = None
    n_train: int | None = None


@dataclass(frozen=True)
class Seen:
    """What the first chunk showed: the inputs' layout, dtype and classes (the same for every chunk)."""

    layout: InputLayout
    dtype: np.dtype
    classes: int
    label_sets: LabelSets | None = None  # a multilabel evaluation's whole CSR truth, checked

    def whole(self, rows: int, kept: dict[str, np.ndarray], slices: Slices | None) -> Batch:
        """The whole evaluation's batch after streaming: its labels, targets and weights as kept, and in
        place of the predictions (streamed, not kept) a zero-stride stand-in that only carries N and C."""
        labels = kept.get("labels")
        return Batch(
            scores=np.broadcast_to(np.zeros((), self.dtype), (rows, self.classes)),
            layout=self.layout,
            labels=None if labels is None else np.ascontiguousarray(labels, dtype=np.int64),
            targets=kept.get("targets"),
            sample_weight=kept.get("sample_weight"),
            slices=slices,
            label_sets=self.label_sets,
        )


class StreamedEvaluation:
    """The evaluation stage of a streamed source: each chunk's predictions (`read`: a model's logits, or
    the files' fields; `calibrate`d when asked) and given rows make a batch, folded by the evaluator that
    the first chunk's batch plans (then known: its layout and classes), so the predictions are never held
    whole (only the per-row columns a stored evaluation keeps)."""

    def __init__(
        self,
        request: EvaluationRequest,
        read: Callable[[Chunk], dict[str, np.ndarray]],
        given: Iterable[str],
        rows: int,
        slices: Slices | None,
        runtime: SessionCache,
        calibrate: Calibrate | None = None,
        truth: MultilabelTruth | None = None,
    ) -> None:
        """`truth`: a multilabel request's label sets and counts (its chunks are then multilabel batches)."""
        self.request, self.read, self.rows, self.slices = request, read, rows, slices
        self.runtime, self.calibrate, self.truth = runtime, calibrate, truth
        self._label_sets: LabelSets | None = None
        self.given = tuple(k for k in given if k != SLOTS)
        self._stage: EvaluationStage | None = None
        self.seen: Seen | None = None

    @property
    def evaluator(self) -> Evaluator:
        assert self._stage is not None, "the stage has seen no chunk"
        return self._stage.evaluator

    def update(self, chunk: Chunk) -> tuple[EvaluationState, Span | None]:
        arrays = self.read(chunk) | {k: chunk[k] for k in self.given}
        if self.calibrate is not None:
            arrays = self.calibrate(arrays)
        batch = validate_batch(**arrays) if self.truth is None else self._multilabel(chunk, arrays)
        if self.slices is not None:
            batch = batch.sliced(replace(self.slices, slots=chunk[SLOTS]))
        if self._stage is None:
            keep_rows = self.request.store or self.request.per_sample
            evaluator = Evaluator(make_plan(self.request, batch), self.runtime)
            slot_count = 0 if self.slices is None else self.slices.slot_count
            self._stage = evaluator.stage(self.rows, batch.classes, keep_rows, slot_count)
            self.seen = Seen(batch.layout, batch.scores.dtype, batch.classes, self._label_sets)
        elif self.truth is not None:
            check_positives(self._stage.evaluator.plan, batch, chunk.start)
        return self._stage.update(Chunk(chunk.start, chunk.stop, batch.feeds()))

    def _multilabel(self, chunk: Chunk, arrays: dict[str, np.ndarray]) -> Batch:
        """A chunk's multilabel batch: its logits and streamed columns, with its rows' slice of the label sets
        (the whole CSR checked against N and C once, at the first chunk)."""
        assert self.truth is not None
        sets, logits = None, arrays.get("logits")
        if self.truth.label_sets is not None and logits is not None and logits.ndim == 2:
            if self._label_sets is None:
                self._label_sets = LabelSets.checked(*self.truth.label_sets, rows=self.rows, classes=logits.shape[1])
            sets = self._label_sets.between(chunk.start, chunk.stop)
        return validate_multilabel(
            **arrays, label_sets=sets, label_frequencies=self.truth.label_frequencies, n_train=self.truth.n_train
        )

    def merge(
        self, left: tuple[EvaluationState, Span | None], right: tuple[EvaluationState, Span | None]
    ) -> tuple[EvaluationState, Span | None]:
        assert self._stage is not None
        return self._stage.merge(left, right)

    def finalize(self, state: tuple[EvaluationState, Span | None]) -> Evaluated:
        assert self._stage is not None
        return self._stage.finalize(state)

    def whole(self, kept: dict[str, np.ndarray]) -> Batch:
        assert self.seen is not None
        return self.seen.whole(self.rows, kept, self.slices)

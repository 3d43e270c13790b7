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
    validate_batch,
)
from app.core.fold import Chunk, Span
from app.core.graph_context import InputLayout
from app.core.losses import DEFAULT_LOSSES, LOSSES
from app.core.metrics import DEFAULT_METRICS, DEFAULT_METRICS_WIDE, METRICS, Ece
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


def make_plan(request: EvaluationRequest, batch: Batch) -> EvaluationPlan:
    default_losses, default_metrics = default_terms(batch.classes > 5)
    losses = request.losses if request.losses is not None else default_losses
    metrics = request.metrics if request.metrics is not None else default_metrics
    uniform = [m.bins for m in metrics if isinstance(m, Ece) and m.binning == "uniform"]
    plan = EvaluationPlan(
        batch.layout, tuple(losses), tuple(metrics), uniform[0] if uniform else request.reliability_bins
    )
    check_plan(plan, batch.classes, batch.slices)
    return plan


@dataclass(frozen=True)
class Seen:
    """What the first chunk showed: the inputs' layout, dtype and classes (the same for every chunk)."""

    layout: InputLayout
    dtype: np.dtype
    classes: int

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
    ) -> None:
        self.request, self.read, self.rows, self.slices = request, read, rows, slices
        self.runtime, self.calibrate = runtime, calibrate
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
        batch = validate_batch(**arrays)
        if self.slices is not None:
            batch = batch.sliced(replace(self.slices, slots=chunk[SLOTS]))
        if self._stage is None:
            keep_rows = self.request.store or self.request.per_sample
            evaluator = Evaluator(make_plan(self.request, batch), self.runtime)
            slot_count = 0 if self.slices is None else self.slices.slot_count
            self._stage = evaluator.stage(self.rows, batch.classes, keep_rows, slot_count)
            self.seen = Seen(batch.layout, batch.scores.dtype, batch.classes)
        return self._stage.update(Chunk(chunk.start, chunk.stop, batch.columns()))

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

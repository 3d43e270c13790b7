"""Fused evaluation: a request's losses and metrics composed into one ONNX graph, run chunk by chunk.

`EvaluationPlan` names what to compute; `build_graph` composes the fragments over one shared
`GraphContext`; `Evaluator` runs the cached session per chunk and folds each chunk's partial sums into
an `EvaluationState`, which merges with other states (chunked, threaded or distributed runs give the
same numbers) and finalizes into losses, metrics and the reliability table.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from spox import Var, build

from app.core import classification
from app.core.bags import checked_bags, empty_bag
from app.core.calibration_error import BinStats
from app.core.chunking import Chunking
from app.core.errors import InputError
from app.core.fold import Assembled, Chunk, InMemory, Source, Span, fold
from app.core.graph_context import GraphContext, InputKind, InputLayout, TargetKind
from app.core.label_sets import LabelSets, RowsWithExtras, multi_hot
from app.core.losses import LOSSES, NEEDS_POSITIVES
from app.core.lru import LruCache
from app.core.metrics import METRICS, bin_stats, uniform_bin_state
from app.core.multilabel import RANKED, ROW_VALUES, row_value
from app.core.multilabel import depth as ranking_depth
from app.core.npy_headers import NPY_HEADERS
from app.core.runtime import SessionCache, default_cache
from app.core.slices import Slices
from app.core.specs import MetricValue, TermSpec

ROW_PREDICTION = "row.prediction"
ROW_CONFIDENCE = "row.confidence"
RELIABILITY = "reliability"
PER_SLOT = "per_slot:"  # prefix of a summed output's per-slot copy, [S, …] (sliced layouts)
PER_SLOT_INDEX, PER_SLOT_VALUES = "per_slot_index:", "per_slot_values:"  # a wide sum's kept (index, value) rows
SLOT_ROWS = "slots.rows"  # rows per slot, [S]
KEPT_SLOTS = "slots.kept"  # each kept row's slots, [N, K] (sliced layouts keeping rows)


@dataclass(frozen=True)
class EvaluationPlan:
    """What one evaluation computes; its signature keys the session cache."""

    layout: InputLayout
    losses: tuple[TermSpec, ...] = ()
    metrics: tuple[TermSpec, ...] = ()
    reliability_bins: int = 15

    @cached_property
    def signature(self) -> str:
        return json.dumps(
            {
                "layout": self.layout.__dict__,
                "losses": [s.model_dump() for s in self.losses],
                "metrics": [s.model_dump() for s in self.metrics],
                "reliability_bins": self.reliability_bins,
            },
            sort_keys=True,
        )


def metric_row_output(key: str) -> str:
    """A multilabel plain-mean metric's per-row values (stored for the gate's bootstrap)."""
    return f"row.metric.{key}"


def loss_output(key: str, part: str) -> str:
    return f"loss.{key}.{part}"


def metric_output(key: str, part: str) -> str:
    return f"metric.{key}.{part}"


STATE_VERSION = 1  # of EvaluationState.to_bytes
REDUCTIONS = "caliper.reductions"  # model metadata: JSON {output: reduction}
Reduction = Literal["row", "sum", "rows"]  # per-row output (not state); added on merge; concatenated on merge


def build_graph(plan: EvaluationPlan) -> onnx.ModelProto:
    """One graph for all requested terms; shared intermediates are built once by the context. Each
    output's reduction is declared where the output is made and travels in the model's metadata."""
    ctx = GraphContext(plan.layout, top_depth=ranking_depth(plan.metrics))
    outputs = {ROW_PREDICTION: ctx.prediction, ROW_CONFIDENCE: ctx.confidence}
    reductions: dict[str, Reduction] = dict.fromkeys(outputs, "row")
    for spec in plan.losses:
        definition, key = LOSSES[spec.name], spec.report_key
        if definition.state is not None:  # summed parts, finalized together (not a mean over rows)
            for part, var in definition.state(ctx, spec).items():
                outputs[loss_output(key, part)], reductions[loss_output(key, part)] = var, "sum"
            continue
        assert definition.build is not None
        term = definition.build(ctx, spec)
        outputs[loss_output(key, "row")] = term.value
        outputs[loss_output(key, "sum")] = ctx.weighted_total(term.value)
        outputs[loss_output(key, "weight")] = (
            ctx.total(ctx.weights) if term.denominator is None else ctx.weighted_total(term.denominator)
        )
        reductions |= {
            loss_output(key, "row"): "row",
            loss_output(key, "sum"): "sum",
            loss_output(key, "weight"): "sum",
        }
    for spec in plan.metrics:
        metric = METRICS[spec.name]
        for part, var in metric.state(ctx, spec).items():
            outputs[metric_output(spec.report_key, part)] = var
            reductions[metric_output(spec.report_key, part)] = "rows" if part in metric.kept_parts else "sum"
        if spec.name in ROW_VALUES and plan.layout.task == "multilabel":
            outputs[metric_row_output(spec.report_key)] = row_value(ctx, spec)
            reductions[metric_row_output(spec.report_key)] = "row"
    for part, var in uniform_bin_state(ctx, plan.reliability_bins).items():
        outputs[f"{RELIABILITY}.{part}"] = var
        reductions[f"{RELIABILITY}.{part}"] = "sum"
    if plan.layout.sliced:
        _add_per_slot(ctx, outputs, reductions)
    model = build(ctx.inputs, outputs)
    onnx.helper.set_model_props(model, {REDUCTIONS: json.dumps(reductions)})
    return model


def _add_per_slot(ctx: GraphContext, outputs: dict[str, Var], reductions: dict[str, Reduction]) -> None:
    """Beside each summed output its per-slot copy (every summed state is made by `GraphContext.total` or
    `scatter_total`, which record it), the rows per slot, and the slots of kept rows."""
    for name, reduction in list(reductions.items()):
        if reduction == "sum" and id(outputs[name]) in ctx.per_slot_rows:
            _, index, values = ctx.per_slot_rows[id(outputs[name])]
            outputs[PER_SLOT_INDEX + name], reductions[PER_SLOT_INDEX + name] = index, "rows"
            outputs[PER_SLOT_VALUES + name], reductions[PER_SLOT_VALUES + name] = values, "rows"
        elif reduction == "sum":
            _, per_slot = ctx.per_slot[id(outputs[name])]
            outputs[PER_SLOT + name], reductions[PER_SLOT + name] = per_slot, "sum"
    outputs[SLOT_ROWS], reductions[SLOT_ROWS] = ctx.slot_rows, "sum"
    if "rows" in reductions.values():
        outputs[KEPT_SLOTS], reductions[KEPT_SLOTS] = ctx.inputs["slots"], "rows"


def _slot_members(slots: np.ndarray, slot_count: int) -> list[np.ndarray]:
    """Each slot's row indices in row order, from the rows' slots [N, K] (the keys' slots are disjoint)."""
    members = [np.empty(0, np.int64)] * slot_count
    for column in slots.T:
        counts = np.bincount(column, minlength=slot_count)
        groups = np.split(np.argsort(column, kind="stable"), np.cumsum(counts)[:-1])
        for slot in np.flatnonzero(counts):
            members[slot] = groups[slot]
    return members


class IncompatibleStateError(ValueError):
    """Two states of different plans (or a blob that is not a state) cannot be merged."""


@dataclass
class EvaluationState:
    """Merged partial sums (added) and kept rows (concatenated), in float64, plus the row count and the
    signature of the plan that made them (states of different plans refuse to merge)."""

    n: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, list[np.ndarray]] = field(default_factory=dict)
    signature: str = ""

    def merge(self, other: EvaluationState) -> EvaluationState:
        """Associative merge: states of disjoint row sets combine into the state of their union
        (row order = self's rows, then other's)."""
        if self.signature and other.signature and self.signature != other.signature:
            raise IncompatibleStateError("the two states come from different evaluation plans")
        sums = dict(self.sums)
        for name, value in other.sums.items():
            sums[name] = sums[name] + value if name in sums else value.copy()
        rows = {name: [*self.rows.get(name, []), *other.rows.get(name, [])] for name in {*self.rows, *other.rows}}
        return EvaluationState(self.n + other.n, sums, rows, self.signature or other.signature)

    def to_bytes(self) -> bytes:
        """An .npz of the parts (no pickles) with a JSON header: version, signature, row count."""
        header = json.dumps({"state_version": STATE_VERSION, "signature": self.signature, "n": self.n})
        arrays = {f"sum:{k}": v for k, v in self.sums.items()} | {
            f"rows:{k}": np.concatenate(v) for k, v in self.rows.items()
        }
        buffer = io.BytesIO()
        np.savez(buffer, header=np.frombuffer(header.encode(), np.uint8), **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EvaluationState:
        try:
            with NPY_HEADERS, np.load(io.BytesIO(data), allow_pickle=False) as npz:
                header = json.loads(npz["header"].tobytes())
                parts = {k: npz[k] for k in npz.files if k != "header"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise IncompatibleStateError(f"not a serialised evaluation state: {exc}") from exc
        if header.get("state_version") != STATE_VERSION:
            raise IncompatibleStateError(f"state version {header.get('state_version')} is not {STATE_VERSION}")
        sums = {k.removeprefix("sum:"): v for k, v in parts.items() if k.startswith("sum:")}
        rows = {k.removeprefix("rows:"): [v] for k, v in parts.items() if k.startswith("rows:")}
        return cls(int(header["n"]), sums, rows, str(header["signature"]))

    def slot_states(self, slot_count: int) -> Iterator[EvaluationState]:
        """The state of each slot's rows alone: its per-slot sums, and its kept rows (in row order). The kept
        rows are joined once and grouped by one stable sort per key (at 1M × 10 with roc_auc, joining them
        per slot instead cost 100 × 40 MB of copies: 2.4× the unsliced evaluation)."""
        rows = {name: np.concatenate(parts) for name, parts in self.rows.items()}
        members = _slot_members(rows.pop(KEPT_SLOTS), slot_count) if KEPT_SLOTS in rows else None
        per_slot = {name.removeprefix(PER_SLOT): v for name, v in self.sums.items() if name.startswith(PER_SLOT)}
        pairs = {}  # a wide sum's kept (index, value) rows, summed per slot below
        for name in [name for name in rows if name.startswith(PER_SLOT_INDEX)]:
            total = name.removeprefix(PER_SLOT_INDEX)
            pairs[total] = (rows.pop(name), rows.pop(PER_SLOT_VALUES + total))
        for slot in range(slot_count):  # one at a time: a slot's bincount may be C² floats
            sums = {name: v[slot] for name, v in per_slot.items()}
            for name, (index, values) in pairs.items():
                assert members is not None
                chosen = members[slot]
                sums[name] = np.bincount(index[chosen].ravel(), values[chosen].ravel(), self.sums[name].size)
            kept = {} if members is None else {name: [array[members[slot]]] for name, array in rows.items()}
            yield EvaluationState(round(float(self.sums[SLOT_ROWS][slot])), sums, kept, self.signature)

    def part(self, names: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
        """One term's state by part name, from its (output name, part name) pairs."""
        return {part: np.concatenate(self.rows[full]) if full in self.rows else self.sums[full] for full, part in names}


def index_dtype(upper: int) -> np.dtype:
    """The smallest unsigned dtype that holds class indices in [0, upper)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if upper <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class OutputLayout:
    """How a plan's graph outputs are read, built once per signature: the names in session order, each
    output's kind (a partial sum, kept rows concatenated on merge, or a per-row output), and every
    metric's and the reliability table's (output name, part name) pairs."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    parts: dict[str, tuple[tuple[str, str], ...]]

    @classmethod
    def of(cls, plan: EvaluationPlan, session: ort.InferenceSession) -> OutputLayout:
        names = [o.name for o in session.get_outputs()]
        reductions = json.loads(session.get_modelmeta().custom_metadata_map[REDUCTIONS])
        prefixes = [metric_output(s.report_key, "") for s in plan.metrics] + [f"{RELIABILITY}."]
        prefixes += [loss_output(s.report_key, "") for s in plan.losses if LOSSES[s.name].state is not None]
        parts = {p: tuple((n, n[len(p) :]) for n in names if n.startswith(p)) for p in prefixes}
        return cls(tuple(names), tuple(reductions[n] for n in names), parts)


_LAYOUTS: LruCache[OutputLayout] = LruCache(capacity=256)


@dataclass(frozen=True)
class EvaluationResult:
    n: int
    classes: int
    losses: dict[str, float]
    metrics: dict[str, MetricValue]
    reliability: list[dict[str, float | None]]  # per uniform bin: lower, upper, count, confidence, accuracy
    slots: tuple[EvaluationResult, ...] = ()  # per slot of a sliced evaluation (`Batch.slices`)


@dataclass(frozen=True)
class Evaluated:
    """A fold's end: the merged state (what merges with other runs), its numbers, and the per-row
    outputs when kept."""

    state: EvaluationState
    result: EvaluationResult
    per_row: dict[str, np.ndarray]


@dataclass
class Batch:
    """Validated input arrays of one evaluation (see `validate_batch`)."""

    scores: np.ndarray  # logits or probabilities, [N, C]
    layout: InputLayout
    labels: np.ndarray | None = None  # int64 [N]
    targets: np.ndarray | None = None  # [N, C]
    sample_weight: np.ndarray | None = None  # [N]
    teacher_logits: np.ndarray | None = None  # [N, C]
    slices: Slices | None = None
    label_sets: LabelSets | None = None  # multilabel truth as CSR (else dense 0/1 `targets`)
    bags: np.ndarray | None = None  # int64 [N]: each row's bag (its distribution in constants["bag_targets"])
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # fed to every chunk (per-label arrays)

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    @property
    def classes(self) -> int:
        return 2 if self.layout.binary else int(self.scores.shape[1])

    @property
    def matrix(self) -> np.ndarray:
        """The scores as [N, C]: binary [N] as the two-class problem, for estimators that take [N, C]."""
        return two_columns(self.scores, self.layout.input_kind) if self.layout.binary else self.scores

    def columns(self) -> dict[str, np.ndarray]:
        """The given arrays by graph input name (the chunks a fold slices)."""
        columns = {self.layout.input_kind: self.scores, "labels": self.labels, "targets": self.targets}
        columns |= {"sample_weight": self.sample_weight, "teacher_logits": self.teacher_logits, "bags": self.bags}
        if self.slices is not None:
            columns["slots"] = self.slices.slots
        return {k: v for k, v in columns.items() if v is not None}

    def feeds(self) -> dict[str, np.ndarray]:
        """All rows as one chunk's graph inputs: the columns, the label sets' rows and the constants."""
        sets = {} if self.label_sets is None else self.label_sets.rows_of(0, self.n)
        return {**self.columns(), **sets, **self.constants}

    def source(self, chunking: Chunking) -> Source:
        """The rows chunk by chunk (a row sized by its scores), with their label sets' slice and the
        constants when there are any."""
        rows = InMemory(self.columns(), chunking, self.scores[0].nbytes if self.n else 1)
        if self.label_sets is None and not self.constants:
            return rows
        return RowsWithExtras(rows, self.label_sets, self.constants)

    def with_bags(self, bags: np.ndarray, bag_targets: np.ndarray) -> Batch:
        """This batch with each row's bag id and the bags' label distributions [B, C] (checked)."""
        bags, bag_targets = checked_bags(bags, bag_targets, self.n, self.classes, self.scores.dtype)
        layout = replace(self.layout, bags=True)
        return replace(self, layout=layout, bags=bags, constants={**self.constants, "bag_targets": bag_targets})

    def sliced(self, slices: Slices | None) -> Batch:
        """This batch with its rows' slots (a sliced layout: its graph sums every state per slot too)."""
        if slices is None:
            return self
        layout = replace(self.layout, slice_keys=len(slices.keys))
        return replace(self, layout=layout, slices=slices)


class Evaluator:
    """Runs one plan: `update` folds a row range into a state, `finalize` turns a state into numbers."""

    def __init__(self, plan: EvaluationPlan, cache: SessionCache | None = None) -> None:
        self.plan = plan
        self.cache = cache or default_cache()
        signature = plan.signature
        self.session = self.cache.get(f"evaluation:{signature}", lambda: build_graph(plan))
        self.outputs = _LAYOUTS.get(signature, lambda: OutputLayout.of(plan, self.session))

    def partial(self, chunk: Chunk, slot_count: int = 0) -> tuple[EvaluationState, dict[str, np.ndarray]]:
        """One chunk of a batch's columns: its state and its per-row outputs (unit weights when none);
        `slot_count` slots when the plan is sliced."""
        feeds = dict(chunk.arrays)
        if "sample_weight" not in feeds:
            feeds["sample_weight"] = np.ones(chunk.stop - chunk.start, dtype=self.plan.layout.np_dtype)
        if self.plan.layout.sliced:
            feeds["slot_count"] = np.array([slot_count], np.int64)
        values = self.session.run(self.outputs.names, feeds)
        state = EvaluationState(chunk.stop - chunk.start, signature=self.plan.signature)
        per_row: dict[str, np.ndarray] = {}
        for name, kind, value in zip(self.outputs.names, self.outputs.kinds, values, strict=True):
            if kind == "rows":
                state.rows[name] = [value]
            elif kind == "row":
                per_row[name] = value
            else:
                state.sums[name] = np.asarray(value, dtype=np.float64)
        return state, per_row

    def stage(self, rows: int, classes: int, keep_rows: bool = True, slot_count: int = 0) -> EvaluationStage:
        """This plan as a fold stage over `rows` rows of `classes` classes (and `slot_count` slots)."""
        return EvaluationStage(self, rows, classes, keep_rows, slot_count)

    def evaluate(self, batch: Batch, chunking: Chunking | None = None, keep_rows: bool = True) -> Evaluated:
        """All rows folded in chunks (the cache's `Chunking` unless given: wide rows get smaller chunks so
        that the intermediates stay in cache) and finalized."""
        source = batch.source(chunking or self.cache.chunking)
        slot_count = 0 if batch.slices is None else batch.slices.slot_count
        stage = self.stage(batch.n, batch.classes, keep_rows, slot_count)
        evaluated: Evaluated = fold(source, {"evaluation": stage})["evaluation"]
        return evaluated

    def finalize(self, state: EvaluationState, classes: int, slot_count: int = 0) -> EvaluationResult:
        """The numbers of a merged state; of a sliced one also those of each slot 0 … slot_count − 1 (a group
        whose weights are all 0 has NaN means, answered null)."""
        parts = self.outputs.parts
        with np.errstate(divide="ignore", invalid="ignore"):
            losses = {s.report_key: self._loss(state, s) for s in self.plan.losses}
            metrics = {
                s.report_key: METRICS[s.name].finalize(state.part(parts[metric_output(s.report_key, "")]), s)
                for s in self.plan.metrics
            }
            reliability = reliability_table(bin_stats(state.part(parts[f"{RELIABILITY}."])))
        slots = tuple(self.finalize(group, classes) for group in state.slot_states(slot_count)) if slot_count else ()
        return EvaluationResult(state.n, classes, losses, metrics, reliability, slots)

    def _loss(self, state: EvaluationState, spec: TermSpec) -> float:
        """A loss's mean over rows, or its own finalize of its summed parts."""
        finalize, key = LOSSES[spec.name].finalize, spec.report_key
        if finalize is not None:
            return finalize(state.part(self.outputs.parts[loss_output(key, "")]), spec)
        return float(state.sums[loss_output(key, "sum")] / state.sums[loss_output(key, "weight")])


class EvaluationStage:
    """An evaluation as a fold stage: each chunk's state merges into the evaluation's; per-row outputs,
    when kept, are assembled in row order, class indices in the smallest dtype that holds them (at 1M rows
    the int64 prediction alone is 8 MB; bench/memory.py). One stage serves one fold."""

    def __init__(self, evaluator: Evaluator, rows: int, classes: int, keep_rows: bool, slot_count: int = 0) -> None:
        self.evaluator, self.classes, self.slot_count = evaluator, classes, slot_count
        self.per_row = Assembled(lambda chunk: chunk.arrays, rows, {ROW_PREDICTION: index_dtype(classes)})
        self.keep_rows = keep_rows

    def update(self, chunk: Chunk) -> tuple[EvaluationState, Span | None]:
        state, per_row = self.evaluator.partial(chunk, self.slot_count)
        kept = self.per_row.update(Chunk(chunk.start, chunk.stop, per_row)) if self.keep_rows else None
        return state, kept

    def merge(
        self, left: tuple[EvaluationState, Span | None], right: tuple[EvaluationState, Span | None]
    ) -> tuple[EvaluationState, Span | None]:
        rows = None if left[1] is None or right[1] is None else self.per_row.merge(left[1], right[1])
        return left[0].merge(right[0]), rows

    def finalize(self, state: tuple[EvaluationState, Span | None]) -> Evaluated:
        per_row = {} if state[1] is None else self.per_row.finalize(state[1])
        return Evaluated(state[0], self.evaluator.finalize(state[0], self.classes, self.slot_count), per_row)


def reliability_table(stats: BinStats) -> list[dict[str, float | None]]:
    """Per uniform bin: its edges, the weight of its rows, and their mean confidence and accuracy
    (null for an empty bin)."""
    bins = stats.count.size
    filled = stats.count > 0
    safe = np.where(filled, stats.count, 1.0)
    confidence = np.where(filled, stats.confidence / safe, np.nan).tolist()
    accuracy = np.where(filled, stats.accuracy / safe, np.nan).tolist()
    return [
        {
            "lower": b / bins,
            "upper": (b + 1) / bins,
            "count": count,
            "confidence": None if empty else confidence[b],
            "accuracy": None if empty else accuracy[b],
        }
        for b, (count, empty) in enumerate(zip(stats.count.tolist(), (~filled).tolist(), strict=True))
    ]


def _task_of(name: str) -> str:
    term = METRICS.get(name) or LOSSES.get(name)
    return term.task if term is not None else "multiclass"


# ---- input validation ------------------------------------------------------------------------------------


FINITE_BLOCK_CELLS = 1 << 20  # values checked per block: the mask of a whole 2,000 × 200,000 batch was 400 MB


def _check_finite(name: str, x: np.ndarray) -> None:
    """Every value finite, checked a block of rows at a time (the boolean mask stays a block's)."""
    rows = max(1, FINITE_BLOCK_CELLS // max(1, x[0].size if x.ndim > 1 and len(x) else 1))
    bad = sum(int(np.size(block) - np.count_nonzero(np.isfinite(block))) for block in _blocks(x, rows))
    if bad:
        raise InputError(name, f"contains {bad} NaN or infinite value(s)")


def _blocks(x: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    for start in range(0, max(len(x), 1) if x.ndim else 1, rows):
        yield x[start : start + rows] if x.ndim else x


def _as_float(name: str, x: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    if x.dtype.kind not in "fiu" or (x.dtype.kind == "f" and x.dtype not in (np.float32, np.float64)):
        raise InputError(name, f"dtype {x.dtype} is not supported (use float32 or float64)")
    target = dtype or (x.dtype if x.dtype.kind == "f" else np.dtype(np.float64))
    return np.ascontiguousarray(x, dtype=target)


def _check_distribution(name: str, x: np.ndarray) -> None:
    if (x < 0).any() or (x > 1).any():
        raise InputError(name, "values must lie in [0, 1]")
    tol = 1e-4 if x.dtype == np.float32 else 1e-8
    row_sums = x.sum(axis=1, dtype=np.float64)
    worst = int(np.argmax(np.abs(row_sums - 1)))
    if abs(row_sums[worst] - 1) > tol * max(1, x.shape[1] ** 0.5):
        raise InputError(name, f"rows must sum to 1 (row {worst} sums to {row_sums[worst]:.10g})")


def validate_scores(raw: np.ndarray, kind: InputKind = "logits") -> np.ndarray:
    """A finite [N ≥ 1, C ≥ 2] float matrix of logits, or of probabilities (each row a distribution)."""
    scores = _as_float(kind, raw)
    if scores.ndim != 2:
        raise InputError(kind, f"must be a 2-D array [N, C], got shape {list(scores.shape)}")
    n, c = scores.shape
    if n == 0:
        raise InputError(kind, "is empty (N = 0)")
    if c < 2:
        raise InputError(kind, f"needs at least 2 classes, got C = {c}")
    _check_finite(kind, scores)
    if kind == "probabilities":
        _check_distribution(kind, scores)
    return scores


def validate_binary(raw: np.ndarray, kind: InputKind) -> np.ndarray:
    """Finite binary scores [N ≥ 1]: log-odds of class 1, or P(class 1) in [0, 1] (api.md)."""
    scores = _as_float(kind, raw)
    if scores.size == 0:
        raise InputError(kind, "is empty (N = 0)")
    _check_finite(kind, scores)
    if kind == "probabilities" and ((scores < 0) | (scores > 1)).any():
        raise InputError(kind, "binary probabilities (1-D: P(class 1)) must lie in [0, 1]")
    return scores


def two_columns(scores: np.ndarray, kind: InputKind = "logits") -> np.ndarray:
    """Binary [N] scores as the [N, 2] problem api.md defines (z = [0, logit], p = [1 − p₁, p₁]): the
    numpy form of `GraphContext.given`, for estimators that take [N, C] (calibrators)."""
    first = np.zeros_like(scores) if kind == "logits" else 1 - scores
    return np.ascontiguousarray(np.stack([first, scores], axis=1))


def _row_weights(sample_weight: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """Finite non-negative weights [N] with a positive, finite total."""
    w = _as_float("sample_weight", sample_weight, dtype)
    if w.shape != (n,):
        raise InputError("sample_weight", f"shape {list(w.shape)} does not match rows: expected [{n}]")
    _check_finite("sample_weight", w)
    if not np.isfinite(w.sum(dtype=np.float64)):
        raise InputError("sample_weight", "the weights' total overflows float64; rescale them")
    if (w < 0).any() or not (w > 0).any():
        raise InputError("sample_weight", "weights must be ≥ 0 with at least one > 0")
    return w


def validate_batch(
    *,
    logits: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    sample_weight: np.ndarray | None = None,
    teacher_logits: np.ndarray | None = None,
) -> Batch:
    """Check shapes, dtypes, finiteness and ranges; the result is safe to feed the graph."""
    if (logits is None) == (probabilities is None):
        raise InputError("logits", "give exactly one of 'logits' and 'probabilities'")
    if (labels is None) == (targets is None):
        raise InputError("labels", "give exactly one of 'labels' and 'targets'")
    kind: InputKind = "logits" if logits is not None else "probabilities"
    raw = logits if logits is not None else probabilities
    assert raw is not None
    binary = np.ndim(raw) == 1
    if binary and targets is not None:
        raise InputError("targets", f"binary (1-D) {kind} take 0/1 `labels`")
    scores = validate_binary(raw, kind) if binary else validate_scores(raw, kind)
    n, c, shape = len(scores), 2 if binary else scores.shape[1], list(scores.shape)
    dtype = scores.dtype
    target_kind: TargetKind = "labels" if labels is not None else "targets"
    batch = Batch(scores=scores, layout=InputLayout(str(dtype), kind, target_kind, teacher_logits is not None, binary))
    if labels is not None:
        if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
            raise InputError("labels", f"must be integers, got dtype {labels.dtype}")
        if labels.shape != (n,):
            raise InputError("labels", f"shape {list(labels.shape)} does not match {kind} rows: expected [{n}]")
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            bad = int(labels[(labels < 0) | (labels >= c)][0])
            raise InputError("labels", f"label {bad} is outside [0, {c}) for C = {c} classes")
        batch.labels = np.ascontiguousarray(labels, dtype=np.int64)
    if targets is not None:
        t = _as_float("targets", targets, dtype)
        if t.shape != (n, c):
            raise InputError("targets", f"shape {list(t.shape)} does not match {kind}: expected [{n}, {c}]")
        _check_finite("targets", t)
        _check_distribution("targets", t)
        batch.targets = t
    if sample_weight is not None:
        batch.sample_weight = _row_weights(sample_weight, n, dtype)
    if teacher_logits is not None:
        t = _as_float("teacher_logits", teacher_logits, dtype)
        if list(t.shape) != shape:
            raise InputError("teacher_logits", f"shape {list(t.shape)} does not match {kind}: expected {shape}")
        _check_finite("teacher_logits", t)
        batch.teacher_logits = t
    return batch


def validate_multilabel(
    *,
    logits: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    label_sets: tuple[np.ndarray, np.ndarray] | None = None,
    sample_weight: np.ndarray | None = None,
    label_frequencies: np.ndarray | None = None,
    n_train: int | None = None,
) -> Batch:
    """A multilabel batch: logits [N, C] with multi-hot `targets` or CSR `label_sets` (indices, offsets),
    optional row weights, and the training label counts the propensity-scored metrics need."""
    if logits is None:
        raise InputError("logits", "a multilabel evaluation takes per-label `logits` [N, C]")
    if (targets is None) == (label_sets is None):
        raise InputError("label_sets", "give exactly one of 'label_sets' and multi-hot 'targets'")
    scores = validate_scores(logits)
    n, c = scores.shape
    dtype = scores.dtype
    kind: TargetKind = "targets" if targets is not None else "label_sets"
    propensity = label_frequencies is not None
    if propensity != (n_train is not None):
        raise InputError("n_train", "give `label_frequencies` and `n_train` together")
    layout = InputLayout(str(dtype), "logits", kind, task="multilabel", propensity=propensity)
    weights = None if sample_weight is None else _row_weights(sample_weight, n, dtype)
    batch = Batch(scores=scores, layout=layout, sample_weight=weights)
    if targets is not None:
        t = _as_float("targets", targets, dtype)
        if t.shape != (n, c):
            raise InputError("targets", f"shape {list(t.shape)} does not match logits: expected [{n}, {c}]")
        batch.targets = multi_hot(t)
    if label_sets is not None:
        batch.label_sets = LabelSets.checked(*label_sets, rows=n, classes=c)
    if label_frequencies is not None and n_train is not None:
        frequencies = _as_float("label_frequencies", label_frequencies, dtype)
        if frequencies.shape != (c,):
            raise InputError(
                "label_frequencies", f"shape {list(frequencies.shape)}: expected [{c}] (one count per label)"
            )
        _check_finite("label_frequencies", frequencies)
        if (frequencies < 0).any():
            raise InputError("label_frequencies", "counts must be ≥ 0")
        if n_train < 1:
            raise InputError("n_train", "must be ≥ 1")
        batch.constants = {"label_frequencies": frequencies, "n_train": np.asarray(n_train, dtype)}
    return batch


def positives_per_row(batch: Batch) -> np.ndarray:
    """|P_i| of a multilabel batch's rows."""
    if batch.label_sets is not None:
        return batch.label_sets.sizes
    assert batch.targets is not None
    sizes: np.ndarray = batch.targets.sum(axis=1)
    return sizes


def _check_multilabel_plan(plan: EvaluationPlan, batch: Batch) -> None:
    """Multilabel terms only; k ≤ C; propensities given for the propensity-scored metrics; a positive in
    every row for the ranking metrics and the softmax losses."""
    wrong = [s.name for s in plan.metrics if METRICS[s.name].task != "multilabel"]
    wrong += [s.name for s in plan.losses if LOSSES[s.name].task != "multilabel"]
    if wrong:
        raise InputError("task", f"{wrong[0]!r} is not a multilabel term (see api.md for those of task: multilabel)")
    for spec in plan.metrics:
        k = getattr(spec, "k", None)
        if k is not None and k > batch.classes:
            raise InputError("metrics", f"{spec.report_key}: k = {k} exceeds C = {batch.classes} labels")
        if spec.name in ("psp_at_k", "psndcg_at_k") and not plan.layout.propensity:
            raise InputError("label_frequencies", f"{spec.name} needs `label_frequencies` and `n_train`")
    check_positives(plan, batch)


def check_positives(plan: EvaluationPlan, batch: Batch, first_row: int = 0) -> None:
    """Every row has a true label when a ranking metric or a softmax loss needs one (a streamed evaluation
    checks each chunk: `first_row` is where it starts)."""
    needing = [s.name for s in plan.metrics if s.name in RANKED]
    needing += [s.name for s in plan.losses if s.name in NEEDS_POSITIVES]
    empty = np.flatnonzero(positives_per_row(batch) == 0) if needing else np.empty(0)
    if empty.size:
        field_name = "label_sets" if batch.label_sets is not None else "targets"
        row = first_row + int(empty[0])
        raise InputError(field_name, f"row {row} has no true label, which {needing[0]} needs (every row needs one)")


def check_plan(plan: EvaluationPlan, classes: int, slices: Slices | None = None, batch: Batch | None = None) -> None:
    """Requirements of the selected terms that depend on the data (labels, teacher, class-weight length),
    and the size of their per-group sums when sliced."""
    if plan.layout.task == "multilabel":
        assert batch is not None
        if slices is not None:
            raise InputError("slices", "a multilabel evaluation is not sliced (yet)")
        _check_multilabel_plan(plan, batch)
    else:
        wrong = [s.name for s in (*plan.metrics, *plan.losses) if _task_of(s.name) == "multilabel"]
        if wrong:
            raise InputError("task", f'{wrong[0]!r} needs "task": "multilabel"')
    if slices is not None:
        widths = [METRICS[s.name].width(s, classes) for s in plan.metrics]
        slices.check_width(max([plan.reliability_bins, classes, *widths]))
    answers = 1 + (0 if slices is None else slices.slot_count)  # the whole, and each group
    cells = answers * sum(classification.answer_cells(s, classes) for s in plan.metrics)
    if cells > classification.MAX_ANSWER_CELLS:
        raise InputError(
            "metrics" if slices is None else "slices",
            f"the answer would hold {cells:,} numbers (confusion matrices of C = {classes} classes, or per-class "
            f"lists, for {answers} groups); at most {classification.MAX_ANSWER_CELLS:,}: ask for fewer",
        )
    for spec in plan.losses:
        definition = LOSSES[spec.name]
        if definition.needs_bags and not plan.layout.bags:
            raise InputError("losses", f"{spec.name!r} needs `bags` and `bag_targets`")
        if definition.state is not None and batch is not None and batch.bags is not None:
            empty = empty_bag(batch.bags, len(batch.constants["bag_targets"]))
            if empty is not None:
                raise InputError("bags", f"bag {empty} has no rows: {spec.name} averages over every bag")
        if definition.needs_labels and plan.layout.target_kind != "labels":
            raise InputError("losses", f"{spec.name!r} needs integer 'labels', not soft 'targets'")
        if definition.needs_teacher and not plan.layout.has_teacher:
            raise InputError("teacher_logits", f"{spec.name!r} needs 'teacher_logits'")
        for param in ("weight", "alpha"):
            weights = getattr(spec, param, None)
            if isinstance(weights, tuple) and len(weights) != classes:
                raise InputError("losses", f"{spec.name}.{param} has {len(weights)} entries for C = {classes} classes")
    keys = [s.report_key for s in plan.losses]
    if len(set(keys)) != len(keys):
        raise InputError("losses", "two losses report under the same key: give each a distinct 'key'")
    for spec in plan.metrics:
        fault = classification.check(spec, classes)
        if fault is not None:
            raise InputError("metrics", fault)
    keys = [s.report_key for s in plan.metrics]
    if len(set(keys)) != len(keys):
        raise InputError("metrics", "two metrics report under the same key: give each a distinct 'key'")

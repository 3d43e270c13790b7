"""Evaluation use case: validated arrays + request options -> numbers, stored all-or-nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from app.conformal.service import evaluation_metrics as conformal_metrics
from app.core.bags import checked_bags
from app.core.conformal import Coverage
from app.core.cosines import checked_cosines, cosines_of
from app.core.errors import InputError
from app.core.evaluation import (
    ROW_CONFIDENCE,
    ROW_PREDICTION,
    Batch,
    Evaluated,
    EvaluationPlan,
    EvaluationResult,
    Evaluator,
    index_dtype,
    loss_output,
    metric_row_output,
    two_columns,
    validate_batch,
    validate_binary,
)
from app.core.fold import Arrays, Assembled, Chunk, Stage, Summed, fold
from app.core.graph_context import InputKind
from app.core.losses import COSINE_LOSSES
from app.core.ood_metrics import separation, separation_plots
from app.core.runtime import SessionCache
from app.core.slices import Slices
from app.distributed.cluster import Cluster
from app.distributed.evaluation import evaluate_on, kept_stage, read_fields
from app.evaluation.multilabel import multilabel_batch, multilabel_truth, refuse_multilabel_fields
from app.evaluation.schemas import (
    EvaluationOut,
    EvaluationRequest,
    ModelEvaluationRequest,
    Reliability,
    ReliabilityBinOut,
    SliceOut,
)
from app.evaluation.streamed import SLOTS, Calibrate, StreamedEvaluation, make_plan
from app.models.runner import INPUTS, ModelRunner, read_logits
from app.pipelines.heads import HeadCheck, Heads
from app.records import EvaluationFilter, Page, finite_or_none, new_id, rfc3339, utc_now
from app.sdm.service import region_metrics
from app.sources.files import DataFiles
from app.sources.source import FileSource
from app.storage.evaluations import EvaluationRepository
from app.storage.models import Evaluation, ModelRecord


def dataset_fingerprint(batch: Batch, block_rows: int = 1 << 20) -> str:
    """sha256 of the labels (int64 little-endian), of the soft or multi-hot targets (float64 little-endian),
    or of the label sets' offsets then indices (int64), hashed a block of rows at a time: a streamed
    evaluation's labels, kept in their own dtype, are never copied whole (20M labels: 160 MB less at the
    peak than one `tobytes` of the int64 column)."""
    if batch.label_sets is not None:
        columns = [(batch.label_sets.offsets, "<i8"), (batch.label_sets.indices, "<i8")]
    else:
        columns = [(batch.labels, "<i8") if batch.labels is not None else (batch.targets, "<f8")]  # type: ignore[list-item]
    digest = hashlib.sha256()
    for values, dtype in columns:
        for start in range(0, len(values), block_rows):
            digest.update(np.ascontiguousarray(values[start : start + block_rows], dtype=dtype).data)
    return digest.hexdigest()


def as_cosines(request: EvaluationRequest, arrays: dict[str, np.ndarray], cache: SessionCache) -> dict[str, np.ndarray]:
    """A request's `cosines` (or the cosines of `embeddings` against `class_weights`) as its logits, which
    the cosine-margin losses read as cosines; those losses without cosines are refused."""
    margin_losses = sorted({spec.name for spec in request.losses or []} & set(COSINE_LOSSES))
    if "cosines" not in arrays and "class_weights" not in arrays:
        if margin_losses:
            raise InputError("losses", f"{margin_losses[0]} takes `cosines` (or `embeddings` with `class_weights`)")
        return arrays
    if "logits" in arrays or "probabilities" in arrays:
        raise InputError("cosines", "cosines come in place of `logits` and `probabilities`")
    if "class_weights" in arrays:
        if "cosines" in arrays or request.sdm_id is not None:
            raise InputError("class_weights", "give `cosines`, or `embeddings` with `class_weights` (not with sdm_id)")
        cosines = cosines_of(arrays.pop("embeddings", None), arrays.pop("class_weights"), cache)
    else:
        cosines = checked_cosines(arrays.pop("cosines"))
    return {**arrays, "logits": cosines}


def _labels_for(labels: np.ndarray | None, field: str) -> np.ndarray:
    """The batch's integer labels, which `field`'s metrics need."""
    if labels is None:
        raise InputError(field, "needs integer `labels` (not soft targets)")
    return labels


def slice_columns(request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The request's slice columns by key: its JSON lists and its `slices.<key>` parts (taken out of
    `arrays`); a key given both ways is a 422."""
    parts = {name.removeprefix("slices."): arrays.pop(name) for name in list(arrays) if name.startswith("slices.")}
    given = request.slices or {}
    twice = sorted(parts.keys() & given.keys())
    if twice:
        raise InputError(f"slices.{twice[0]}", "given both as a part and inside 'request'")
    return {**{key: np.asarray(values) for key, values in given.items()}, **parts}


def sliced_batch(request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> Batch:
    """The validated batch, with its rows' slots when the request has slices, and their bags when it has
    `bags` (whose distributions are then the rows' soft targets if neither labels nor targets are given)."""
    columns = slice_columns(request, arrays)
    bags, bag_targets = arrays.pop("bags", None), arrays.pop("bag_targets", None)
    if (bags is None) != (bag_targets is None):
        raise InputError("bags" if bags is None else "bag_targets", "give `bags` and `bag_targets` together")
    if bags is not None and bag_targets is not None and "labels" not in arrays and "targets" not in arrays:
        scores = arrays.get("logits", arrays.get("probabilities"))
        if scores is not None and scores.ndim == 2:
            dtype = scores.dtype if scores.dtype in (np.float32, np.float64) else np.dtype(np.float64)
            bags, bag_targets = checked_bags(bags, bag_targets, len(scores), scores.shape[1], dtype)
            arrays["targets"] = bag_targets[bags]
    batch = validate_batch(**arrays)
    if bags is not None and bag_targets is not None:
        batch = batch.with_bags(bags, bag_targets)
    return batch.sliced(Slices.of(columns, batch.n) if columns else None)


@dataclass
class ComputedEvaluation:
    """An evaluation's numbers and per-row outputs, before (or without) storing."""

    request: EvaluationRequest
    batch: Batch
    plan: EvaluationPlan
    result: EvaluationResult
    per_row: dict[str, np.ndarray]
    model_id: str | None = None  # the uploaded model that produced the logits
    detector_id: str | None = None  # the detector whose separation is under `ood`
    ood: dict[str, float | None] | None = None  # separation of a detector's scores, in vs ood_inputs
    ood_plots: dict[str, Any] | None = None  # its ROC curve and score histograms, for the web report
    created: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        self.losses = finite_or_none(self.result.losses)
        self.metrics = finite_or_none(self.result.metrics)
        self.fingerprint = dataset_fingerprint(self.batch)
        slices = self.batch.slices
        self.slices = None if slices is None else slices_out(slices, self.result, self.request.min_slice_rows)


def compute(request: EvaluationRequest, arrays: dict[str, np.ndarray], cache: SessionCache) -> ComputedEvaluation:
    """Validate, run the fused graph chunk by chunk, finalize."""
    batch = (
        multilabel_batch(request, dict(arrays)) if request.task == "multilabel" else sliced_batch(request, dict(arrays))
    )
    plan = make_plan(request, batch)
    evaluator = Evaluator(plan, cache)
    keep_rows = request.store or request.per_sample  # rows are for storage and per_sample only
    evaluated = evaluator.evaluate(batch, keep_rows=keep_rows)
    return ComputedEvaluation(request, batch, plan, evaluated.result, evaluated.per_row)


def _row_arrays(batch: Batch, plan: EvaluationPlan, per_row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a later paired comparison needs: label, prediction, confidence and each loss per row."""
    arrays = {
        "prediction": per_row[ROW_PREDICTION],  # already in index_dtype(C)
        "confidence": per_row[ROW_CONFIDENCE],
    }
    if batch.labels is not None:
        arrays["label"] = batch.labels.astype(index_dtype(batch.classes), copy=False)
    for spec in plan.losses:
        if loss_output(spec.report_key, "row") in per_row:  # a bag-level loss has no per-row value
            arrays[f"loss.{spec.report_key}"] = per_row[loss_output(spec.report_key, "row")]
    for spec in plan.metrics:
        if metric_row_output(spec.report_key) in per_row:
            arrays[f"metric.{spec.report_key}"] = per_row[metric_row_output(spec.report_key)]
    if batch.slices is not None:  # each row's group under each key, as its index in the key's values
        for k, key in enumerate(batch.slices.keys):
            first, count = batch.slices.slot_range(k).start, len(batch.slices.values[k])
            arrays[f"slice.{key}"] = (batch.slices.slots[:, k] - first).astype(index_dtype(count))
    return arrays


def slices_out(slices: Slices, result: EvaluationResult, min_rows: int) -> dict[str, dict[str, SliceOut]]:
    """Per key, per value: the group's rows, and its losses and metrics when it has `min_rows` rows."""
    out: dict[str, dict[str, SliceOut]] = {}
    for k, key in enumerate(slices.keys):
        groups = out[key] = {}
        for slot, value in zip(slices.slot_range(k), slices.values[k], strict=True):
            group = result.slots[slot]
            if group.n < min_rows:
                groups[value] = SliceOut(n=group.n)
            else:
                groups[value] = SliceOut(
                    n=group.n,
                    losses=finite_or_none(group.losses),
                    metrics=finite_or_none(group.metrics),
                    reliability=[ReliabilityBinOut.model_validate(b) for b in group.reliability],
                )
    return out


def row_values(array: np.ndarray) -> list[float | None]:
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()  # type: ignore[no-any-return]
    return [v if ok else None for v, ok in zip(values.tolist(), finite.tolist(), strict=True)]


class EvaluationService:
    """Evaluation use cases. `create` composes the others: a calibrator (by id) turns the logits into
    the probabilities that are evaluated, while SDM (by id) scores the raw logits with the embeddings;
    the evaluation with its SDM metrics is then stored in one transaction."""

    def __init__(
        self,
        repository: EvaluationRepository,
        heads: HeadCheck,
        models: ModelRunner,
        runtime: SessionCache,
        files: DataFiles | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        """`files`: where `source` files may be read from (nowhere by default); `cluster`: the Dask cluster
        that evaluates them (none: this process)."""
        self.repository, self.heads, self.models, self.runtime = repository, heads, models, runtime
        self.files, self.cluster = files or DataFiles(), cluster
        self.calibrators, self.detectors, self.sdm = heads.calibrators, heads.detectors, heads.sdm

    def create(self, request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> EvaluationOut:
        if request.task == "multilabel" and request.source:
            return self.create_from_files(request, arrays)
        if request.task == "multilabel":
            computed = compute(request, arrays, self.runtime)
            return evaluation_out(computed, self.store(computed) if request.store else None)
        refuse_multilabel_fields(request, arrays)
        if request.source and ("bags" in arrays or "bag_targets" in arrays):
            raise InputError("bags", "bag-level losses are not computed on an evaluation from `source` (yet)")
        arrays = as_cosines(request, dict(arrays), self.runtime)
        if request.source:
            return self.create_from_files(request, arrays)
        embeddings = arrays.pop("embeddings", None)
        if (embeddings is None) != (request.sdm_id is None):
            field = "embeddings" if embeddings is None else "sdm_id"
            raise InputError(field, "give `sdm_id` and `embeddings` together")
        raw_logits = arrays.get("logits")
        given = arrays  # what a conformal head ranks: the raw logits (or the given probabilities)
        if request.calibrator_id is not None:
            arrays = self.calibrators.calibrated_inputs(request.calibrator_id, arrays)
        computed = compute(request, arrays, self.runtime)
        if request.conformal_id is not None:
            computed.metrics.update(self._conformal_metrics(request.conformal_id, given, computed.batch))
        if embeddings is not None and request.sdm_id is not None:
            labels = computed.batch.labels
            if raw_logits is None or labels is None:
                raise InputError(
                    "sdm_id", "SDM metrics need `logits` (the SDM activation uses them) and integer `labels`"
                )
            sdm_inputs = {"embeddings": embeddings, "logits": raw_logits}
            computed.metrics.update(self.sdm.evaluation_metrics(request.sdm_id, sdm_inputs, labels))
        record_id = self.store(computed) if request.store else None
        return evaluation_out(computed, record_id)

    def create_from_model(
        self, model_id: str, request: ModelEvaluationRequest, arrays: dict[str, np.ndarray]
    ) -> EvaluationOut:
        """Evaluate an uploaded model on inputs (from the body or from files): the model runs chunk by
        chunk (CALIPER_MODEL_BATCH_ROWS rows) and each chunk's logits, calibrated when asked, fold into the
        mergeable evaluation state, so the logits are never held whole (only the per-row columns a stored
        evaluation keeps, and the labels, targets and weights)."""
        as_cosines(request, {}, self.runtime)  # a margin loss needs cosines, which a model does not give
        arrays = dict(arrays)
        truth = multilabel_truth(request, arrays) if request.task == "multilabel" else None
        if truth is None:
            refuse_multilabel_fields(request, arrays)
        if request.bags is not None or request.bag_targets is not None:
            raise InputError("bags", "bag-level losses take logits as tensors, not an uploaded model's (yet)")
        record = self.models.get(model_id)
        if request.model is None:
            request = request.model_copy(update={"model": record.name})
        slice_given = slice_columns(request, arrays)
        has_ood = any(k.startswith("ood_inputs.") for k in arrays)  # JSON or multipart parts
        if (request.detector_id is None) == has_ood:
            raise InputError("ood_inputs", "give `detector_id` and `ood_inputs` together")
        heads = Heads(request.calibrator_id, request.detector_id, request.sdm_id, request.conformal_id)
        wanted = self.heads.outputs(record, heads)
        given = {k: v for k, v in arrays.items() if not k.startswith("ood_inputs.")}
        files = self.files.open(request.source, given) if request.source else None
        source = (
            self.models.source(record, given, wanted)
            if files is None
            else self.models.file_source(record, files, wanted)
        )
        rows = {k: v for k, v in given.items() if not k.startswith(INPUTS)}  # labels, targets, … given inline
        beside = [*rows, *(k for k in request.source or {} if not k.startswith(INPUTS))]
        if request.sdm_id is not None and "labels" not in beside:
            raise InputError("sdm_id", "SDM metrics need integer `labels`")
        n = source.rows
        slices = Slices.of(slice_given, n) if slice_given else None
        if slices is not None:  # each row's slots travel with its chunk
            source = source.beside({SLOTS: slices.slots})
        spread_out = self.cluster is not None and isinstance(source.feed, FileSource) and heads == Heads()
        if spread_out and truth is None:  # a multilabel evaluation runs here (its workers take no label sets, yet)
            assert self.cluster is not None and isinstance(source.feed, FileSource)
            model = self.models.model_file(record, source.feed.chunking.rows)
            spread = evaluate_on(self.cluster.client(), request, source.feed, slices, model, self.runtime.chunking)
            if not record.binary:
                self.models.learn_classes(record, spread.seen.classes)
            whole = spread.seen.whole(n, {**rows, **spread.kept}, slices)
            result = spread.evaluated
            computed = ComputedEvaluation(request, whole, spread.plan, result.result, result.per_row, model_id)
            return evaluation_out(computed, self.store(computed) if request.store else None)

        def read(chunk: Chunk) -> dict[str, np.ndarray]:
            return {"logits": read_logits(record, chunk[record.logits_output])}

        evaluation = StreamedEvaluation(request, read, beside, n, slices, self.runtime, self._calibrate(request), truth)
        stages: dict[str, Stage[Any, Any]] = {"evaluation": evaluation, **({} if files is None else kept_stage(files))}
        if request.sdm_id is not None:
            stages["regions"] = Assembled(self._regions_step(request.sdm_id, record), n)
        detector_reads: dict[str, str] = {}
        if request.detector_id is not None:
            detector_reads = self.detectors.model_outputs(request.detector_id, record.embedding_output)
            stages["scores"] = Assembled(self._scores_step(request.detector_id, detector_reads), n)
        if request.conformal_id is not None:
            if "labels" not in beside:
                raise InputError("conformal_id", "conformal metrics need integer `labels`")
            stages["conformal"] = Summed(self._conformal_step(request.conformal_id, record))
        folded = fold(source, stages)
        evaluated: Evaluated = folded["evaluation"]
        whole, plan = evaluation.whole({**rows, **folded.get("kept", {})}), evaluation.evaluator.plan
        computed = ComputedEvaluation(
            request, whole, plan, evaluated.result, evaluated.per_row, model_id, request.detector_id
        )
        if "regions" in folded:
            assert whole.labels is not None
            computed.metrics.update(finite_or_none(region_metrics(folded["regions"], whole.labels)))
        if "conformal" in folded:
            sums = folded["conformal"]
            computed.metrics.update(conformal_metrics(Coverage.from_sums(sums["covered"], sums["size"], n)))
        if "scores" in folded:
            computed.ood, computed.ood_plots = self._separation(
                record, request, folded["scores"]["scores"], arrays, detector_reads
            )
        record_id = self.store(computed) if request.store else None
        return evaluation_out(computed, record_id)

    def create_from_files(self, request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> EvaluationOut:
        """An evaluation whose tensor fields (some or all) are read from files (`source`): the files and
        the inline tensors stream chunk by chunk into the evaluation state, as a model's outputs do, here
        or, with a Dask cluster (and no calibrator, not multilabel), in windows on its workers; the labels, targets and
        weights read are kept whole (the fingerprint and the stored per-row columns need them), the
        predictions never are."""
        assert request.source is not None
        if request.sdm_id is not None or "embeddings" in arrays:
            raise InputError("sdm_id", "SDM metrics are not computed on an evaluation from `source`")
        if request.conformal_id is not None:
            raise InputError("conformal_id", "conformal metrics are not computed on an evaluation from `source` (yet)")
        arrays = dict(arrays)
        truth = multilabel_truth(request, arrays) if request.task == "multilabel" else None
        slice_given = slice_columns(request, arrays)
        source = self.files.open(request.source, arrays)
        slices = Slices.of(slice_given, source.rows) if slice_given else None
        if slices is not None:  # each row's slots travel with its chunk
            source = replace(source, inline={**arrays, SLOTS: slices.slots})
        if self.cluster is not None and request.calibrator_id is None and truth is None:
            spread = evaluate_on(self.cluster.client(), request, source, slices)
            evaluated, plan = spread.evaluated, spread.plan
            whole = spread.seen.whole(source.rows, {**arrays, **spread.kept}, slices)
        else:
            evaluation = StreamedEvaluation(
                request, read_fields(source), arrays, source.rows, slices, self.runtime, self._calibrate(request), truth
            )
            stages: dict[str, Stage[Any, Any]] = {"evaluation": evaluation, **kept_stage(source)}
            folded = fold(source, stages)
            evaluated, plan = folded["evaluation"], evaluation.evaluator.plan
            whole = evaluation.whole({**arrays, **folded.get("kept", {})})
        computed = ComputedEvaluation(request, whole, plan, evaluated.result, evaluated.per_row)
        record_id = self.store(computed) if request.store else None
        return evaluation_out(computed, record_id)

    def _calibrate(self, request: EvaluationRequest) -> Calibrate | None:
        """The request's calibrator applied to a chunk's inputs, if it names one."""
        calibrator_id = request.calibrator_id
        if calibrator_id is None:
            return None
        return lambda arrays: self.calibrators.calibrated_inputs(calibrator_id, arrays)

    def _regions_step(self, sdm_id: str, record: ModelRecord) -> Callable[[Chunk], Arrays]:
        """A chunk's SDM region columns, from the model's raw logits and embeddings."""

        def step(chunk: Chunk) -> Arrays:
            sdm_inputs = {
                "embeddings": chunk[record.embedding_output or ""],
                "logits": read_logits(record, chunk[record.logits_output]),
            }
            return self.sdm.regions(sdm_id, sdm_inputs)

        return step

    def _conformal_metrics(self, conformal_id: str, given: dict[str, np.ndarray], batch: Batch) -> dict[str, float]:
        """Coverage and mean set size of the predictor's sets of the request's raw scores (a binary [N] one
        as the two-class problem)."""
        labels = _labels_for(batch.labels, "conformal_id")
        kind: InputKind = "logits" if "logits" in given else "probabilities"
        scores = two_columns(validate_binary(given[kind], kind), kind) if given[kind].ndim == 1 else given[kind]
        _, _, coverage = self.heads.conformal.predict(conformal_id, {kind: scores, "labels": labels})
        assert coverage is not None
        return conformal_metrics(coverage)

    def _conformal_step(self, conformal_id: str, record: ModelRecord) -> Callable[[Chunk], Arrays]:
        """A chunk's covered rows and set sizes, summed: the predictor's sets of the model's raw logits."""

        def step(chunk: Chunk) -> Arrays:
            logits = read_logits(record, chunk[record.logits_output])
            scores = two_columns(logits) if record.binary else logits
            sets, sizes, _ = self.heads.conformal.predict(conformal_id, {"logits": scores})
            labels = chunk["labels"].astype(np.int64)
            return {"covered": np.sum(sets[np.arange(len(labels)), labels]), "size": np.sum(sizes)}

        return step

    def _scores_step(self, detector_id: str, reads: dict[str, str]) -> Callable[[Chunk], Arrays]:
        """A chunk's detector scores, from the model outputs the detector reads."""

        def step(chunk: Chunk) -> Arrays:
            return {"scores": self.detectors.score(detector_id, {k: chunk[v] for k, v in reads.items()})[0]}

        return step

    def _separation(
        self,
        record: ModelRecord,
        request: ModelEvaluationRequest,
        scores_in: np.ndarray,
        arrays: dict[str, np.ndarray],
        reads: dict[str, str],
    ) -> tuple[dict[str, float | None], dict[str, Any]]:
        """/v1/ood/evaluate's metrics of the detector's scores of the inputs against those of `ood_inputs`,
        and what the web report draws of them."""
        assert request.detector_id is not None
        given = {k.removeprefix("ood_inputs."): v for k, v in arrays.items() if k.startswith("ood_inputs.")}
        out = self.models.outputs(record, given, list(dict.fromkeys(reads.values())))
        scores_out, _ = self.detectors.score(request.detector_id, {k: out[v] for k, v in reads.items()})
        outlier_in, outlier_out = scores_in.astype(np.float64), scores_out.astype(np.float64)
        metrics = separation(outlier_in, outlier_out)
        counts = {"n_in": float(len(scores_in)), "n_out": float(len(scores_out))}
        return {**finite_or_none(metrics), **counts}, separation_plots(outlier_in, outlier_out)

    def store(self, computed: ComputedEvaluation) -> str:
        """Write the evaluation, its values and per-row arrays in one transaction; returns its id."""
        batch, plan, request = computed.batch, computed.plan, computed.request
        record = Evaluation(
            id=new_id(),
            created_at=computed.created,
            model=request.model,
            dataset=request.dataset,
            n=computed.result.n,
            classes=computed.result.classes,
            dataset_fingerprint=computed.fingerprint,
            parameters={
                "input": batch.layout.__dict__,
                "losses": [s.model_dump(exclude_none=True) for s in plan.losses],
                "metrics": [s.model_dump(exclude_none=True) for s in plan.metrics],
                "weighted": batch.sample_weight is not None,
                **({} if batch.slices is None else {"slices": batch.slices.values_by_key()}),
            },
            reliability=computed.result.reliability,
            calibrator_id=request.calibrator_id,
            sdm_id=request.sdm_id,
            model_id=computed.model_id,
            detector_id=computed.detector_id,
            slices=None if computed.slices is None else _dump_slices(computed.slices),
            ood_plots=computed.ood_plots or None,
        )
        arrays = _row_arrays(batch, plan, computed.per_row)
        stored = self.repository.add(record, request.tags, computed.losses, computed.metrics, arrays, computed.ood)
        return stored.id

    def get(self, evaluation_id: str, per_sample: bool = False) -> EvaluationOut:
        record = self.repository.get(evaluation_id)
        rows = None
        if per_sample:
            rows = {k.removeprefix("loss."): v for k, v in self.repository.arrays(evaluation_id, "loss.").items()}
        return stored_evaluation_out(record, rows)

    def page(self, filters: EvaluationFilter, limit: int, cursor: str | None) -> Page[EvaluationOut]:
        rows, next_cursor = self.repository.page(filters, limit, cursor)
        return Page[EvaluationOut](items=[stored_evaluation_out(r) for r in rows], next_cursor=next_cursor)

    def set_tags(self, evaluation_id: str, tags: dict[str, str]) -> EvaluationOut:
        """`caliper promote EVAL_ID --tag prod` sets tag `prod`; a gate's baseline selector then picks
        the newest evaluation with it."""
        return stored_evaluation_out(self.repository.set_tags(evaluation_id, tags))

    def delete(self, evaluation_id: str) -> None:
        self.repository.delete(evaluation_id)


def evaluation_out(computed: ComputedEvaluation, record_id: str | None) -> EvaluationOut:
    request, plan = computed.request, computed.plan
    per_sample = None
    if request.per_sample:
        rows = {s.report_key: computed.per_row.get(loss_output(s.report_key, "row")) for s in plan.losses}
        per_sample = {key: row_values(values) for key, values in rows.items() if values is not None}
    return EvaluationOut(
        id=record_id,
        created_at=rfc3339(computed.created),
        n=computed.result.n,
        classes=computed.result.classes,
        model=request.model,
        dataset=request.dataset,
        tags=request.tags,
        dataset_fingerprint=computed.fingerprint,
        losses=computed.losses,
        metrics=computed.metrics,
        reliability=Reliability.model_validate({"bins": computed.result.reliability}),
        calibrator_id=request.calibrator_id,
        sdm_id=request.sdm_id,
        model_id=computed.model_id,
        detector_id=computed.detector_id,
        ood=computed.ood,
        per_sample=per_sample,
        slices=computed.slices,
    )


def stored_evaluation_out(record: Evaluation, per_sample: dict[str, np.ndarray] | None = None) -> EvaluationOut:
    """A stored evaluation as the API returns it."""
    return EvaluationOut(
        id=record.id,
        created_at=rfc3339(record.created_at),
        n=record.n,
        classes=record.classes,
        model=record.model,
        dataset=record.dataset,
        tags={t.key: t.value for t in record.tags},
        dataset_fingerprint=record.dataset_fingerprint,
        losses={v.name: v.value for v in record.values if v.kind == "loss"},
        metrics={v.name: v.value for v in record.values if v.kind == "metric"} | (record.metric_lists or {}),
        ood={v.name: v.value for v in record.values if v.kind == "ood"} or None,
        reliability=Reliability.model_validate({"bins": record.reliability}),
        calibrator_id=record.calibrator_id,
        sdm_id=record.sdm_id,
        model_id=record.model_id,
        detector_id=record.detector_id,
        ood_plots=record.ood_plots,
        per_sample={k: row_values(v) for k, v in per_sample.items()} if per_sample is not None else None,
        slices=record.slices,
    )


def _dump_slices(slices: dict[str, dict[str, SliceOut]]) -> dict[str, Any]:
    """As answered, with each group's reliability table (kept for the web report, not answered)."""
    return {key: {value: _dump_group(group) for value, group in groups.items()} for key, groups in slices.items()}


def _dump_group(group: SliceOut) -> dict[str, Any]:
    dumped = group.model_dump()
    if group.reliability is not None:
        dumped["reliability"] = [b.model_dump() for b in group.reliability]
    return dumped

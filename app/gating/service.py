"""Gate use case: resolve the two evaluations, compute bootstrap intervals from their stored per-row
arrays where the metric allows it, check every rule, store the verdict."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from app.conformal.service import EVALUATION_METRICS as CONFORMAL_METRICS
from app.core.bootstrap import MAX_CONFUSION_CELLS, RowValues, bootstrap_differences, percentile_interval
from app.core.errors import InputError
from app.core.losses import LOSSES
from app.core.metrics import METRICS, Resampling
from app.gating import rules as gate_rules
from app.gating.schemas import MAX_RULES, BaselineSelector, GateOut, GateRequest, Rule, RuleResult
from app.records import EvaluationFilter, NotFoundError, new_id, rfc3339, utc_now
from app.sdm.service import EVALUATION_METRICS as SDM_METRICS
from app.storage.evaluations import EvaluationRepository
from app.storage.models import Evaluation, GateRecord
from app.storage.repository import Repository
from app.stored import StoredResource


def _values(record: Evaluation, group: dict[str, str] | None = None) -> dict[str, tuple[str, Any]]:
    """key -> (kind, value), of the whole evaluation or of one group of its slices; losses win a name
    clash with metrics."""
    if group is None:
        metrics = {v.name: v.value for v in record.values if v.kind == "metric"} | (record.metric_lists or {})
        losses = {v.name: v.value for v in record.values if v.kind == "loss"}
    else:
        stored = _stored_group(record, group) or {}
        metrics, losses = stored.get("metrics", {}), stored.get("losses", {})
    return {name: ("metric", v) for name, v in metrics.items()} | {name: ("loss", v) for name, v in losses.items()}


def _stored_group(record: Evaluation, group: dict[str, str]) -> dict[str, Any] | None:
    """The stored numbers of one slice group ({"n", "losses"?, "metrics"?}), or None when there is none."""
    ((key, value),) = group.items()
    stored: dict[str, Any] | None = (record.slices or {}).get(key, {}).get(value)
    return stored


def _check_group(record: Evaluation, group: dict[str, str], index: int, role: str) -> None:
    """422 naming the rule when the evaluation has no such slice group (or too few rows to have numbers)."""
    ((key, value),) = group.items()
    stored = _stored_group(record, group)
    if stored is None:
        raise InputError(f"rules[{index}].slice", f"the {role} evaluation has no slice {key}={value!r}")
    if "metrics" not in stored:
        raise InputError(
            f"rules[{index}].slice",
            f"the {role}'s group {key}={value!r} has {stored['n']} rows, below its min_slice_rows",
        )


def _group_member(record: Evaluation, arrays: dict[str, np.ndarray], group: dict[str, str]) -> np.ndarray:
    """Which stored rows are in one slice group."""
    ((key, value),) = group.items()
    member: np.ndarray = arrays[f"slice.{key}"] == record.parameters["slices"][key].index(value)
    return member


def _spec(record: Evaluation, kind: str, key: str) -> dict[str, Any] | None:
    for spec in record.parameters.get("losses" if kind == "loss" else "metrics", []):
        if spec.get("key", spec["name"]) == key:
            return dict(spec)
    return None


def higher_is_better(record: Evaluation, kind: str, key: str) -> bool:
    """The term's own declared direction (`LossDef`, `MetricDef`), found through the stored spec's name
    (so a custom key keeps its term's direction); SDM and conformal metrics declare theirs where they are
    made."""
    spec = _spec(record, kind, key)
    terms = LOSSES if kind == "loss" else METRICS
    if spec is not None and spec["name"] in terms:
        return terms[spec["name"]].higher_is_better
    return (SDM_METRICS | CONFORMAL_METRICS).get(key, False)


def _resampling(spec: dict[str, Any]) -> Resampling | None:
    metric = METRICS.get(spec["name"])
    if metric is None:
        return None
    return metric.resampling(metric.spec.model_validate(spec))


def row_values(record: Evaluation, arrays: dict[str, np.ndarray], kind: str, key: str) -> tuple[RowValues | None, str]:
    """Per-row values from which `key` is a plain mean or a binned ECE (as the metric declares), or why
    there are none."""
    if record.parameters.get("weighted"):
        return None, "the evaluation used sample weights"
    spec = _spec(record, kind, key) or {"name": key}
    if kind == "loss":
        weighted = any(p in spec for p in ("weight",))
        if weighted or f"loss.{key}" not in arrays:
            return None, f"no unweighted per-row values for loss {key!r}"
        return RowValues("mean", values=arrays[f"loss.{key}"].astype(np.float64)), ""
    resampling = _resampling(spec)
    if resampling is not None and resampling.statistic == "rows":
        if f"metric.{key}" not in arrays:
            return None, f"no per-row values for metric {key!r}"
        return RowValues("mean", values=arrays[f"metric.{key}"].astype(np.float64)), ""
    if "label" not in arrays:
        return None, "the evaluation has no integer labels"
    correct = (arrays["prediction"].astype(np.int64) == arrays["label"].astype(np.int64)).astype(np.float64)
    if resampling is not None and resampling.statistic == "correct":
        return RowValues("mean", values=correct), ""
    if resampling is not None and resampling.statistic == "confusion":
        return _confusion_values(record, arrays, spec)
    if resampling is not None and resampling.statistic == "ece":
        confidence = arrays["confidence"].astype(np.float64)
        return RowValues("ece", confidence=confidence, correct=correct, bins=resampling.bins), ""
    for loss_name in resampling.losses if resampling is not None else ():
        for loss in record.parameters.get("losses", []):
            plain = not any(k in loss for k in ("weight", "label_smoothing", "alpha"))
            if loss["name"] == loss_name and plain and f"loss.{loss.get('key', loss_name)}" in arrays:
                return RowValues("mean", values=arrays[f"loss.{loss.get('key', loss_name)}"].astype(np.float64)), ""
    return None, f"no per-row values from which to resample {key!r}"


def _confusion_values(
    record: Evaluation, arrays: dict[str, np.ndarray], spec: dict[str, Any]
) -> tuple[RowValues | None, str]:
    """Each row's confusion cell, and the metric of a resampled matrix (its own finalize)."""
    classes = record.classes
    if classes * classes > MAX_CONFUSION_CELLS:
        return None, f"C = {classes} classes: a resampled {classes} × {classes} matrix per replicate is too wide"
    metric = METRICS[spec["name"]]
    parsed = metric.spec.model_validate(spec)
    cells = arrays["label"].astype(np.int64) * classes + arrays["prediction"].astype(np.int64)

    def of_matrix(matrix: np.ndarray) -> float:
        value = metric.finalize({"confusion": matrix}, parsed)
        assert isinstance(value, float)  # a resampled metric is a number (lists are never resampled)
        return value

    return RowValues("confusion", cells=cells, classes=classes, of_matrix=of_matrix), ""


def _intervals(
    evaluations: EvaluationRepository,
    request: GateRequest,
    candidate: Evaluation,
    baseline: Evaluation,
    kinds: dict[str, str],
    paired: bool,
) -> tuple[dict[int, tuple[float, float]], dict[int, str]]:
    """Bootstrap intervals of candidate − baseline for every change rule whose metric can be resampled
    from the stored per-row arrays: one shared draw of resampling weights (seeded) per row set — the whole
    evaluation, or one slice group (paired there only when both sides hold the same rows in the group)."""
    if request.significance is None:
        return {}, {}
    notes: dict[int, str] = {}
    row_sets: dict[tuple[str, str] | None, tuple[list[tuple[RowValues, RowValues]], list[int], bool]] = {}
    arrays_c, arrays_b = evaluations.arrays(candidate.id), evaluations.arrays(baseline.id)  # once per gate
    for index, rule in enumerate(request.rules):
        if rule.op in ("min", "max"):
            continue
        kind, group = kinds.get(rule.metric, "metric"), rule.slice
        rows_of_c, rows_of_b, same_rows = arrays_c, arrays_b, paired
        if group is not None:
            member_c, member_b = _group_member(candidate, arrays_c, group), _group_member(baseline, arrays_b, group)
            same_rows = paired and np.array_equal(member_c, member_b)
            rows_of_c = {name: array[member_c] for name, array in arrays_c.items()}
            rows_of_b = {name: array[member_b] for name, array in arrays_b.items()}
        rows_c, why_c = row_values(candidate, rows_of_c, kind, rule.metric)
        rows_b, why_b = row_values(baseline, rows_of_b, kind, rule.metric)
        if rows_c is None or rows_b is None:
            notes[index] = f"; no interval: {why_c or why_b}"
            continue
        pairs, indices, _ = row_sets.setdefault(
            None if group is None else next(iter(group.items())), ([], [], same_rows)
        )
        pairs.append((rows_c, rows_b))
        indices.append(index)
    intervals = {}
    for pairs, indices, same_rows in row_sets.values():
        replicates = bootstrap_differences(pairs, same_rows, request.resamples, request.seed)
        for k, index in enumerate(indices):
            interval = percentile_interval(replicates[:, k], request.significance)
            if interval is None:
                notes[index] = "; no interval: every resample was empty"
            else:
                intervals[index] = interval
    return intervals, notes


def judge(evaluations: EvaluationRepository, request: GateRequest) -> GateRecord:
    """Check every rule of `request` on the candidate against its baseline: the verdict to store."""
    candidate = evaluations.get(request.candidate, "candidate")
    baseline = resolve_baseline(evaluations, request.baseline)
    if baseline.id == candidate.id:
        raise InputError("baseline", "the baseline is the candidate itself")
    paired = candidate.dataset_fingerprint == baseline.dataset_fingerprint and candidate.n == baseline.n
    mode = None if request.significance is None else ("paired" if paired else "unpaired")
    for index, rule in enumerate(request.rules):
        if rule.slice is not None:
            _check_group(candidate, rule.slice, index, "candidate")
            _check_group(baseline, rule.slice, index, "baseline")
    for index, rule in enumerate(request.rules):
        for role, record in (("candidate", candidate), ("baseline", baseline)):
            if isinstance(_values(record, rule.slice).get(rule.metric, ("", None))[1], list):
                raise InputError(
                    f"rules[{index}].metric",
                    f"{rule.metric!r} of the {role} is a list (per class, or a confusion matrix); a rule compares "
                    "one number: gate an averaged metric",
                )
    kinds = {name: kind for name, (kind, _) in _values(candidate).items()}
    intervals, notes = _intervals(evaluations, request, candidate, baseline, kinds, paired)
    results: list[RuleResult] = []
    for index, rule in enumerate(request.rules):
        cand_values, base_values = _values(candidate, rule.slice), _values(baseline, rule.slice)
        kind, cand = cand_values.get(rule.metric, (kinds.get(rule.metric, "metric"), None))
        base = base_values.get(rule.metric, (kind, None))[1]
        interval = intervals.get(index)
        direction = 1 if higher_is_better(candidate, kind, rule.metric) else -1
        outcome = gate_rules.check(rule.op, rule.value, cand, base, direction, interval)
        results.append(
            RuleResult(
                metric=rule.metric,
                slice=rule.slice,
                op=rule.op,
                value=rule.value,
                severity=rule.severity,
                candidate=cand,
                baseline=base,
                delta=outcome.delta,
                interval=list(interval) if interval else None,
                passed=outcome.passed,
                reason=outcome.reason + notes.get(index, ""),
            )
        )
    failed = [r for r in results if not r.passed]
    verdict = "fail" if any(r.severity == "fail" for r in failed) else ("warn" if failed else "pass")
    return GateRecord(
        id=new_id(),
        created_at=utc_now(),
        candidate_id=candidate.id,
        baseline_id=baseline.id,
        verdict=verdict,
        request=request.model_dump(mode="json"),
        report={"bootstrap": mode, "rules": [r.model_dump(mode="json") for r in results]},
    )


class GateService(StoredResource[GateRecord, GateOut]):
    """Gate use cases: judge and store a verdict, look verdicts up, list them."""

    def __init__(self, evaluations: EvaluationRepository, gates: Repository[GateRecord]) -> None:
        super().__init__(gates, gate_out)
        self.evaluations = evaluations

    def create(self, request: GateRequest) -> GateOut:
        return gate_out(self.repository.add(judge(self.evaluations, request)))

    def of_candidates(self, evaluation_ids: Collection[str], limit: int = 1000) -> list[GateOut]:
        """The gates that judged these evaluations as candidates, newest first."""
        return [gate_out(r) for r in self.repository.among("candidate_id", evaluation_ids, limit)]

    def of_evaluation(self, evaluation_id: str, limit: int = 50) -> list[GateOut]:
        """The gates in which this evaluation was the candidate or the baseline, newest first."""
        gates = self.repository.among("candidate_id", [evaluation_id], limit)
        gates += self.repository.among("baseline_id", [evaluation_id], limit)
        return [gate_out(r) for r in sorted(gates, key=lambda g: (g.created_at, g.id), reverse=True)]

    def tolerated(self, gate: GateOut) -> list[tuple[float | None, float | None]]:
        """Per rule, the changes it accepts (`rules.tolerated`), each in its metric's better direction."""
        candidate = self.evaluations.get(gate.candidate, "candidate")
        kinds = {name: kind for name, (kind, _) in _values(candidate).items()}
        regions = []
        for rule in gate.rules:
            direction = 1 if higher_is_better(candidate, kinds.get(rule.metric, "metric"), rule.metric) else -1
            regions.append(gate_rules.tolerated(rule.op, rule.value, rule.baseline, direction))
        return regions

    def intervals(
        self, baseline: str, candidate: str, metrics: list[str], significance: float, resamples: int
    ) -> dict[str, list[float] | None]:
        """Bootstrap intervals of candidate − baseline for each named loss or metric (None where the stored
        per-row arrays cannot resample it), judged as a gate is but not stored: the compare page's column."""
        rules = [Rule(metric=m, op="max_increase_abs", value=0.0) for m in metrics[:MAX_RULES]]
        request = GateRequest(
            candidate=candidate, baseline=baseline, rules=rules, significance=significance, resamples=resamples
        )
        return {r["metric"]: r["interval"] for r in judge(self.evaluations, request).report["rules"]}

    def baseline_id(self, baseline: str | BaselineSelector) -> str:
        """The evaluation a gate with this baseline would compare with (NotFoundError when none)."""
        return resolve_baseline(self.evaluations, baseline).id


def resolve_baseline(evaluations: EvaluationRepository, baseline: str | BaselineSelector) -> Evaluation:
    """The baseline by id, or the newest evaluation matching the selector (a tag `key` or `key:value`)."""
    if isinstance(baseline, str):
        return evaluations.get(baseline, "baseline")
    tags = [baseline.tag] if baseline.tag is not None else []
    record = evaluations.newest(EvaluationFilter.selecting(baseline.model, baseline.dataset, tags, "baseline.tag"))
    if record is None:
        raise NotFoundError(f"no evaluation matches the baseline selector {baseline.model_dump(exclude_none=True)}")
    return record


def gate_out(record: GateRecord) -> GateOut:
    return GateOut(
        id=record.id,
        created_at=rfc3339(record.created_at),
        verdict=record.verdict,
        candidate=record.candidate_id,
        baseline=record.baseline_id,
        bootstrap=record.report.get("bootstrap"),
        rules=[RuleResult.model_validate(r) for r in record.report["rules"]],
        request=record.request,
    )

"""Gate use case: resolve the two evaluations, compute bootstrap intervals from their stored per-row
arrays where the metric allows it, check every rule, store the verdict."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.bootstrap import RowValues, bootstrap_differences, percentile_interval
from app.core.errors import InputError
from app.evaluation.service import rfc3339
from app.gating import rules as gate_rules
from app.gating.schemas import BaselineSelector, GateOut, GateRequest, RuleResult
from app.storage.evaluations import get_evaluation, load_arrays
from app.storage.models import Evaluation, EvaluationTag, GateRecord


class NotFoundError(LookupError):
    pass


def resolve_baseline(session: Session, baseline: str | BaselineSelector) -> Evaluation:
    if isinstance(baseline, str):
        record = get_evaluation(session, baseline)
        if record is None:
            raise NotFoundError(f"no evaluation with id {baseline!r} (baseline)")
        return record
    query = select(Evaluation)
    if baseline.model is not None:
        query = query.where(Evaluation.model == baseline.model)
    if baseline.dataset is not None:
        query = query.where(Evaluation.dataset == baseline.dataset)
    if baseline.tag is not None:
        key, sep, value = baseline.tag.partition(":")
        tagged = select(EvaluationTag.evaluation_id).where(EvaluationTag.key == key)
        if sep:
            tagged = tagged.where(EvaluationTag.value == value)
        query = query.where(Evaluation.id.in_(tagged))
    record = session.scalars(query.order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(1)).first()
    if record is None:
        raise NotFoundError(f"no evaluation matches the baseline selector {baseline.model_dump(exclude_none=True)}")
    return record


def _values(record: Evaluation) -> dict[str, tuple[str, float | None]]:
    """key -> (kind, value); losses win a name clash with metrics."""
    out = {v.name: ("metric", v.value) for v in record.values if v.kind == "metric"}
    out.update({v.name: ("loss", v.value) for v in record.values if v.kind == "loss"})
    return out


def _spec(record: Evaluation, kind: str, key: str) -> dict[str, Any] | None:
    for spec in record.parameters.get("losses" if kind == "loss" else "metrics", []):
        if spec.get("key", spec["name"]) == key:
            return dict(spec)
    return None


def row_values(record: Evaluation, arrays: dict[str, np.ndarray], kind: str, key: str) -> tuple[RowValues | None, str]:
    """Per-row values from which `key` is a plain mean or a binned ECE, or why there are none."""
    if record.parameters.get("weighted"):
        return None, "the evaluation used sample weights"
    spec = _spec(record, kind, key) or {"name": key}
    name = spec["name"]
    if kind == "loss":
        weighted = any(p in spec for p in ("weight",))
        if weighted or f"loss.{key}" not in arrays:
            return None, f"no unweighted per-row values for loss {key!r}"
        return RowValues("mean", values=arrays[f"loss.{key}"].astype(np.float64)), ""
    if "label" not in arrays:
        return None, "the evaluation has no integer labels"
    correct = (arrays["prediction"].astype(np.int64) == arrays["label"].astype(np.int64)).astype(np.float64)
    if name == "accuracy":
        return RowValues("mean", values=correct), ""
    if name == "ece" and spec.get("binning", "uniform") == "uniform" and spec.get("norm", "l1") == "l1":
        return RowValues(
            "ece", confidence=arrays["confidence"].astype(np.float64), correct=correct, bins=int(spec.get("bins", 15))
        ), ""
    per_row_loss = {"nll": ("nll", "cross_entropy"), "brier": ("brier",)}.get(name, ())
    for loss_name in per_row_loss:
        for loss in record.parameters.get("losses", []):
            plain = not any(k in loss for k in ("weight", "label_smoothing", "alpha"))
            if loss["name"] == loss_name and plain and f"loss.{loss.get('key', loss_name)}" in arrays:
                return RowValues("mean", values=arrays[f"loss.{loss.get('key', loss_name)}"].astype(np.float64)), ""
    return None, f"no per-row values from which to resample {key!r}"


def _intervals(
    session: Session,
    request: GateRequest,
    candidate: Evaluation,
    baseline: Evaluation,
    values: dict[str, tuple[str, float | None]],
    paired: bool,
) -> tuple[dict[int, tuple[float, float]], dict[int, str]]:
    """Bootstrap intervals of candidate − baseline for every change rule whose metric can be resampled
    from the stored per-row arrays, all from one shared draw of resampling weights (seeded)."""
    if request.significance is None:
        return {}, {}
    pairs, indices, notes = [], [], {}
    arrays_c, arrays_b = load_arrays(session, candidate.id), load_arrays(session, baseline.id)  # once per gate
    for index, rule in enumerate(request.rules):
        kind = values.get(rule.metric, ("metric", None))[0]
        if rule.op in ("min", "max"):
            continue
        rows_c, why_c = row_values(candidate, arrays_c, kind, rule.metric)
        rows_b, why_b = row_values(baseline, arrays_b, kind, rule.metric)
        if rows_c is None or rows_b is None:
            notes[index] = f"; no interval: {why_c or why_b}"
            continue
        pairs.append((rows_c, rows_b))
        indices.append(index)
    if not pairs:
        return {}, notes
    replicates = bootstrap_differences(pairs, paired, request.resamples, request.seed)
    intervals = {}
    for k, index in enumerate(indices):
        interval = percentile_interval(replicates[:, k], request.significance)
        if interval is None:
            notes[index] = "; no interval: every resample was empty"
        else:
            intervals[index] = interval
    return intervals, notes


def evaluate_gate(session: Session, request: GateRequest) -> tuple[GateRecord, GateOut]:
    candidate = get_evaluation(session, request.candidate)
    if candidate is None:
        raise NotFoundError(f"no evaluation with id {request.candidate!r} (candidate)")
    baseline = resolve_baseline(session, request.baseline)
    if baseline.id == candidate.id:
        raise InputError("baseline", "the baseline is the candidate itself")
    paired = candidate.dataset_fingerprint == baseline.dataset_fingerprint and candidate.n == baseline.n
    mode = None if request.significance is None else ("paired" if paired else "unpaired")
    cand_values, base_values = _values(candidate), _values(baseline)
    intervals, notes = _intervals(session, request, candidate, baseline, cand_values, paired)
    results: list[RuleResult] = []
    for index, rule in enumerate(request.rules):
        kind, cand = cand_values.get(rule.metric, ("metric", None))
        base = base_values.get(rule.metric, (kind, None))[1]
        interval = intervals.get(index)
        outcome = gate_rules.check(
            rule.op, rule.value, cand, base, gate_rules.better_direction(kind, rule.metric), interval
        )
        results.append(
            RuleResult(
                metric=rule.metric,
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
    record = GateRecord(
        id=uuid.uuid4().hex,
        created_at=datetime.now(UTC).replace(tzinfo=None),
        candidate_id=candidate.id,
        baseline_id=baseline.id,
        verdict=verdict,
        request=request.model_dump(mode="json"),
        report={"bootstrap": mode, "rules": [r.model_dump(mode="json") for r in results]},
    )
    session.add(record)
    return record, gate_out(record)


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


def add_tags(session: Session, evaluation_id: str, tags: dict[str, str]) -> Evaluation:
    """Set tags on a stored evaluation (`caliper promote`); an existing key gets the new value."""
    record = get_evaluation(session, evaluation_id)
    if record is None:
        raise NotFoundError(f"no evaluation with id {evaluation_id!r}")
    current = {t.key: t for t in record.tags}
    for key, value in tags.items():
        if key in current:
            current[key].value = value
        else:
            record.tags.append(EvaluationTag(key=key, value=value))
    session.flush()
    return record

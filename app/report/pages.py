"""What each page of the web report shows, read through the same services as the API (no second path to
the database) and drawn from what is stored: an evaluation's reliability table, metric values and lists
and slices, a gate's rule results, a calibrator's fit report. Each method returns the template's context:
plain values, and Vega-Lite specs under `charts` (`app.report.charts`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from app.calibration.service import CalibrationService
from app.core.errors import InputError
from app.core.metrics import METRICS
from app.evaluation.schemas import EvaluationOut
from app.evaluation.service import EvaluationService
from app.gating.schemas import GateOut
from app.gating.service import GateService
from app.models.service import ModelService
from app.ood.detectors import DetectorService
from app.pipelines.service import PipelineService
from app.records import EvaluationFilter, NotFoundError
from app.report import charts

HISTORY_LIMIT = 500  # evaluations on a model's history page, newest
HIGHLIGHT = "prod"  # the tag (key, or value) of production evaluations on a model's history page
PER_CLASS = ("precision", "recall", "f1")
COMPARE_ROWS = 20_000  # the compare page bootstraps at once up to this many rows, else when asked (100k rows of
# 3 losses and 3 metrics took 1.3 s on a 2-core machine)
COMPARE_LEVEL, COMPARE_RESAMPLES = 0.95, 1000


@dataclass(frozen=True)
class Services:
    evaluations: EvaluationService
    gates: GateService
    calibrators: CalibrationService
    detectors: DetectorService
    models: ModelService
    pipelines: PipelineService


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def scalar_metrics(evaluation: EvaluationOut) -> dict[str, float | None]:
    """The metrics that are one number (lists — per class, confusion matrices — are drawn apart)."""
    return {k: v for k, v in evaluation.metrics.items() if not isinstance(v, list)}


class ReportPages:
    def __init__(self, services: Services) -> None:
        self.s = services

    def home(self) -> dict[str, Any]:
        return {
            "evaluations": self.s.evaluations.page(EvaluationFilter(), 10, None).items,
            "gates": self.s.gates.page(10, None).items,
            "models": self.s.models.page(10, None).items,
            "pipelines": self.s.pipelines.page(10, None).items,
        }

    def evaluations(
        self,
        model: str | None,
        dataset: str | None,
        tag: str | None,
        since: str | None,
        until: str | None,
        cursor: str | None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """A page of evaluations, newest first, filtered by model, dataset, a tag (`key` or `key:value`) and
        a date range (`since` and `until` as YYYY-MM-DD, both days included)."""
        filters = EvaluationFilter.selecting(model or None, dataset or None, [tag] if tag else [], "tag")
        last_day = _day(until, "until")
        end = None if last_day is None else last_day + timedelta(days=1)
        filters = replace(filters, since=_day(since, "since"), until=end)
        page = self.s.evaluations.page(filters, limit, cursor or None)
        query = {
            "model": model or "",
            "dataset": dataset or "",
            "tag": tag or "",
            "since": since or "",
            "until": until or "",
        }
        return {"items": page.items, "next_cursor": page.next_cursor, "query": query}

    def evaluation(self, evaluation_id: str) -> dict[str, Any]:
        evaluation = self.s.evaluations.get(evaluation_id)
        bins = [b.model_dump() for b in evaluation.reliability.bins]
        ece = number(evaluation.metrics.get("ece"))
        page: dict[str, Any] = {
            "e": evaluation,
            "metrics": scalar_metrics(evaluation),
            "bins": charts.reliability_bins(bins),
            "gates": self.s.gates.of_evaluation(evaluation_id),
            "charts": {
                "reliability": charts.reliability_diagram(bins, ece),
                "confidence": charts.confidence_histogram(bins),
            },
        }
        confusion: Any = evaluation.metrics.get("confusion_matrix")
        if isinstance(confusion, list) and confusion:
            page["confusion"] = confusion
            page["charts"]["confusion"] = charts.heat_map(confusion, "Confusion matrix", "True", "Predicted", ".0f")
            page["charts"]["confusion_normalised"] = charts.heat_map(
                row_normalised(confusion), "Confusion matrix, rows normalised", "True", "Predicted", ".2f"
            )
        per_class = per_class_rows(evaluation)
        if per_class:
            present = [m for m in PER_CLASS if any(r.get(m) is not None for r in per_class)]
            page["per_class"], page["per_class_metrics"] = per_class, present
            page["charts"]["per_class"] = charts.per_class_bars(per_class, present)
        if evaluation.slices:
            page["slices"] = slice_tables(evaluation)
        page["charts"].update(ood_charts(evaluation))
        return page

    def model_history(self, name: str, metrics: list[str], highlight: str) -> dict[str, Any]:
        """Each chosen metric (default: every one-number metric and loss of the newest evaluation) over the
        model's evaluations by date, each point coloured by the newest gate verdict on it."""
        items = self.s.evaluations.page(EvaluationFilter(model=name), HISTORY_LIMIT, None).items
        uploads = self.s.models.page(100, None, name=name).items
        if not items and not uploads:
            raise NotFoundError(f"no evaluation or model named {name!r}")
        verdicts: dict[str, str] = {}
        for gate in self.s.gates.of_candidates([e.id for e in items if e.id]):
            verdicts.setdefault(gate.candidate, gate.verdict)  # newest first: the first seen is the newest
        newest = items[0] if items else None
        available = list(newest.losses) + list(scalar_metrics(newest)) if newest else []
        chosen = [m for m in metrics if m] or available
        series = {}
        for metric in chosen:
            points = []
            for e in reversed(items):
                value = number(e.losses.get(metric, e.metrics.get(metric)))
                if value is None or e.id is None:
                    continue
                label = e.tags.get("git_sha") or e.dataset or e.id[:8]
                marked = highlight in e.tags or highlight in e.tags.values()
                points.append(
                    {
                        "created_at": e.created_at,
                        "value": value,
                        "id": e.id,
                        "label": label,
                        "verdict": verdicts.get(e.id, "none"),
                        "highlighted": marked,
                        "href": f"/ui/evaluations/{e.id}",
                    }
                )
            series[metric] = charts.metric_history(metric, points)
        pipelines = [p for m in uploads for p in self.s.pipelines.page(100, None, model_id=m.id).items]
        return {
            "name": name,
            "evaluations": items,
            "verdicts": verdicts,
            "available": available,
            "chosen": chosen,
            "highlight": highlight,
            "uploads": uploads,
            "pipelines": pipelines,
            "charts": series,
        }

    def gate(self, gate_id: str) -> dict[str, Any]:
        gate = self.s.gates.get(gate_id)
        rows = gate_rows(gate, self.s.gates.tolerated(gate))
        return {"g": gate, "rows": rows, "charts": gate_charts(rows)}

    def calibrator(self, calibrator_id: str) -> dict[str, Any]:
        calibrator = self.s.calibrators.get(calibrator_id)
        report = calibrator.fit_report
        overlays = {}
        titles = {"fit": "on the fit data", "validation": "on the validation split", "cv": "out of fold (CV)"}
        for part, tables in report.get("reliability", {}).items():
            pairs = [("before", tables["before"]), ("after", tables["after"])]
            overlays[part] = charts.reliability_overlay(pairs, f"Reliability before and after, {titles[part]}")
        weights = {k: v for k, v in calibrator.fitted.items() if isinstance(v, list) and v and isinstance(v[0], list)}
        for name, matrix in weights.items():
            overlays[f"weights:{name}"] = charts.heat_map(matrix, f"Fitted {name}", "Row", "Column", ".2f")
        scalars = {k: v for k, v in calibrator.fitted.items() if k not in weights}
        return {"c": calibrator, "scalars": scalars, "charts": overlays}

    def detector(self, detector_id: str) -> dict[str, Any]:
        """The detector's parameters and fit, the model evaluations that measured its separation of in- and
        out-of-distribution inputs, and the plots of the newest of them."""
        detector = self.s.detectors.get(detector_id)
        evaluations = self.s.evaluations.page(EvaluationFilter(detector_id=detector_id), 50, None).items
        newest = next((e for e in evaluations if e.ood_plots), None)
        return {"d": detector, "evaluations": evaluations, "newest": newest, "charts": ood_charts(newest)}

    def ood(self, evaluation_id: str) -> dict[str, Any]:
        """A model evaluation's OOD separation: AUROC/AUPR/FPR@95, the score histograms and the ROC curve."""
        evaluation = self.s.evaluations.get(evaluation_id)
        if not evaluation.ood:
            raise NotFoundError(f"evaluation {evaluation_id!r} has no OOD separation (a model evaluation with "
                                "`detector_id` and `ood_inputs` has one)")  # fmt: skip
        return {"e": evaluation, "charts": ood_charts(evaluation)}

    def compare(self, a: str, b: str, bootstrap: bool = False) -> dict[str, Any]:
        """Two evaluations side by side: their values, the change, both reliability tables overlaid, and
        the gates that compared them. On the same dataset, the paired-bootstrap interval of each change is
        computed from the stored per-row values as a gate computes it (not stored): at once up to
        COMPARE_ROWS rows, beyond that when asked (`bootstrap`)."""
        left, right = self.s.evaluations.get(a), self.s.evaluations.get(b)
        keys = list(dict.fromkeys([*left.losses, *scalar_metrics(left), *right.losses, *scalar_metrics(right)]))
        rows: list[dict[str, Any]] = []
        for key in keys:
            x = number(left.losses.get(key, left.metrics.get(key)))
            y = number(right.losses.get(key, right.metrics.get(key)))
            rows.append({"key": key, "a": x, "b": y, "delta": None if x is None or y is None else y - x})
        gates = [g for g in self.s.gates.of_evaluation(a) if {g.candidate, g.baseline} == {a, b}]
        overlay = charts.reliability_overlay(
            [
                ("A", [x.model_dump() for x in left.reliability.bins]),
                ("B", [x.model_dump() for x in right.reliability.bins]),
            ],
            "Reliability of A and B",
        )
        same_data = left.dataset_fingerprint == right.dataset_fingerprint and left.n == right.n
        intervals: dict[str, list[float] | None] = {}
        if same_data and (bootstrap or left.n <= COMPARE_ROWS):
            compared = [r["key"] for r in rows if r["delta"] is not None]
            intervals = self.s.gates.intervals(a, b, compared, COMPARE_LEVEL, COMPARE_RESAMPLES) if compared else {}
        for row in rows:
            row["interval"] = intervals.get(row["key"])
        return {
            "a": left,
            "b": right,
            "rows": rows,
            "gates": gates,
            "same_data": same_data,
            "bootstrapped": bool(intervals),
            "level": COMPARE_LEVEL,
            "resamples": COMPARE_RESAMPLES,
            "charts": {"overlay": overlay},
        }

    def listing(self, kind: str, cursor: str | None, limit: int = 50) -> dict[str, Any]:
        """A page of gates, calibrators or detectors, newest first."""
        service = {"gates": self.s.gates, "calibrators": self.s.calibrators, "detectors": self.s.detectors}[kind]
        page = service.page(limit, cursor or None)  # type: ignore[attr-defined]
        return {"kind": kind, "heading": kind.capitalize(), "items": page.items, "next_cursor": page.next_cursor}

    def models(self) -> dict[str, Any]:
        return {"models": self.s.models.page(500, None).items, "pipelines": self.s.pipelines.page(500, None).items}


def ood_charts(evaluation: EvaluationOut | None) -> dict[str, Any]:
    """The score histograms and ROC curve stored with an evaluation's OOD separation (none without)."""
    plots = evaluation.ood_plots if evaluation is not None else None
    if not plots or evaluation is None:
        return {}
    auroc = number((evaluation.ood or {}).get("auroc"))
    return {
        "histogram": charts.score_histograms(plots["histogram"]),
        "roc": charts.roc_curve(plots["roc"], plots["at_95"], auroc),
    }


def _day(text: str | None, field: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d")
    except ValueError as exc:
        raise InputError(field, f"{text!r} is not a date (YYYY-MM-DD)") from exc


def row_normalised(matrix: list[list[float | None]]) -> list[list[float | None]]:
    """Each row of a confusion matrix divided by its sum (recall on the diagonal); a row without rows stays
    empty (None)."""
    rows = []
    for row in matrix:
        total = sum(v or 0.0 for v in row)
        rows.append([None if total == 0 or v is None else v / total for v in row])
    return rows


def per_class_rows(evaluation: EvaluationOut) -> list[dict[str, Any]]:
    """Per class: precision, recall and F1 as stored (`average: none` lists), else from the stored confusion
    matrix (zero_division = 0, as the metrics); empty when neither is stored."""
    lists: dict[str, Any] = {m: evaluation.metrics.get(m) for m in PER_CLASS}
    stored = {m: v for m, v in lists.items() if isinstance(v, list) and v and not isinstance(v[0], list)}
    confusion: Any = evaluation.metrics.get("confusion_matrix")
    if not stored and isinstance(confusion, list) and confusion:
        stored = per_class_from_confusion(confusion)
    if not stored:
        return []
    classes = max(len(v) for v in stored.values())
    return [{"class": c} | {m: v[c] for m, v in stored.items()} for c in range(classes)]


def per_class_from_confusion(matrix: list[list[float]]) -> dict[str, list[float]]:
    """Precision (diagonal / column sum), recall (diagonal / row sum) and F1 per class, 0 where the
    denominator is 0 (scikit-learn's zero_division=0)."""
    c = len(matrix)
    true = [sum(matrix[i]) for i in range(c)]
    predicted = [sum(matrix[i][j] for i in range(c)) for j in range(c)]
    precision = [matrix[j][j] / predicted[j] if predicted[j] else 0.0 for j in range(c)]
    recall = [matrix[j][j] / true[j] if true[j] else 0.0 for j in range(c)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    return {"precision": precision, "recall": recall, "f1": f1}


def slice_tables(evaluation: EvaluationOut) -> list[dict[str, Any]]:
    """Per slice key: its groups with every one-number value, the worst first: by accuracy when it was
    asked for, else by the first value in its declared direction (a loss: highest first)."""
    tables = []
    for key, groups in (evaluation.slices or {}).items():
        columns = list(
            dict.fromkeys(
                name
                for g in groups.values()
                for name in [*(g.losses or {}), *(g.metrics or {})]
                if not isinstance((g.metrics or {}).get(name), list)
            )
        )
        rows: list[dict[str, Any]] = []
        for value, group in groups.items():
            metrics: dict[str, Any] = group.metrics or {}
            values = (group.losses or {}) | {k: v for k, v in metrics.items() if not isinstance(v, list)}
            row = {"value": value, "n": group.n, "values": {c: number(values.get(c)) for c in columns}}
            if group.reliability:
                bins = [b.model_dump() for b in group.reliability]
                row["chart"] = charts.reliability_diagram(bins, number(metrics.get("ece")), f"{key} = {value}")
            rows.append(row)
        order_by = "accuracy" if "accuracy" in columns else next(iter(columns), None)
        if order_by is not None:
            term = METRICS.get(order_by) if order_by in evaluation.metrics else None
            worse_is_higher = term is None or not term.higher_is_better  # a loss, or a metric like ECE
            rows.sort(key=lambda r: _worst_first(r["values"].get(order_by), worse_is_higher))
        tables.append({"key": key, "columns": columns, "rows": rows, "order_by": order_by})
    return tables


def _worst_first(value: float | None, higher_is_worse: bool) -> tuple[int, float]:
    if value is None:
        return (1, 0.0)
    return (0, -value if higher_is_worse else value)


def gate_rows(gate: GateOut, regions: list[tuple[float | None, float | None]]) -> list[dict[str, Any]]:
    rows = []
    for index, (rule, (low, high)) in enumerate(zip(gate.rules, regions, strict=True)):
        group = "" if not rule.slice else " [" + ", ".join(f"{k}={v}" for k, v in rule.slice.items()) + "]"
        lower, upper = (rule.interval or [None, None])[:2]
        rows.append(
            {
                "index": index,
                "label": f"{index + 1}. {rule.metric}{group} {rule.op} {rule.value:g}",
                "rule": rule,
                "delta": rule.delta,
                "lower": lower,
                "upper": upper,
                "allowed_lower": low,
                "allowed_upper": high,
                "outcome": "passed" if rule.passed else "failed",
            }
        )
    return rows


def gate_charts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The interval chart of the rules that compare with the baseline (min/max rules bound the candidate
    alone and are in the table only); open ends of a region reach past every value drawn."""
    rows = [r for r in rows if r["delta"] is not None]
    if not rows:
        return {}
    finite = [
        v
        for r in rows
        for v in (r["delta"], r["lower"], r["upper"], r["allowed_lower"], r["allowed_upper"])
        if v is not None
    ]
    span = (max(finite) - min(finite)) or max(abs(v) for v in finite) or 1.0
    low, high = min(finite) - span, max(finite) + span
    drawn = [
        r
        | {
            "allowed_lower": r["allowed_lower"] if r["allowed_lower"] is not None else low,
            "allowed_upper": r["allowed_upper"] if r["allowed_upper"] is not None else high,
        }
        for r in rows
    ]
    return {"intervals": charts.gate_intervals([{k: v for k, v in r.items() if k != "rule"} for r in drawn])}

"""Vega-Lite specifications of the report's plots, built from what is stored (reliability tables, gate
results, metric values) and never by recomputing. Each builder returns a plain dict: the pages embed it
as JSON and vega-embed draws it as SVG in the browser (`app.report.assets`), so a test can read the very
data a plot is given. Colours are the Okabe–Ito palette (safe for the common colour-vision
deficiencies); every chart has a title, axis titles and a `description` that vega writes as the SVG's
ARIA label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Spec = dict[str, Any]

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#7F7F7F",
)
SERIES = [BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY]  # Okabe–Ito, in order of contrast on white
VERDICTS = {"pass": GREEN, "warn": ORANGE, "fail": VERMILLION, "none": GREY}
CONFIG = {
    "font": "system-ui, sans-serif",
    "view": {"stroke": None},
    "axis": {"labelFontSize": 11, "titleFontSize": 12},
    "title": {"fontSize": 14, "anchor": "start"},
}
WIDTH = 420


def _chart(title: str, description: str, body: Spec) -> Spec:
    return {"$schema": SCHEMA, "title": title, "description": description, "config": CONFIG} | body


def _diagonal() -> Spec:
    """The dashed line y = x: perfect calibration, or a ROC curve's chance level."""
    ends = {"values": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}
    axes = {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}}
    return {"data": ends, "mark": {"type": "line", "color": GREY, "strokeDash": [4, 4]}, "encoding": axes}


def _unit(title: str) -> Spec:
    return {"type": "quantitative", "title": title, "scale": {"domain": [0, 1]}}


def reliability_bins(bins: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-empty bins of a stored reliability table, with each one's gap |accuracy − confidence|."""
    rows = []
    for b in bins:
        if b.get("count") and b.get("confidence") is not None and b.get("accuracy") is not None:
            gap = abs(b["accuracy"] - b["confidence"])
            rows.append({k: b[k] for k in ("lower", "upper", "count", "confidence", "accuracy")} | {"gap": gap})
    return rows


def reliability_diagram(bins: Sequence[dict[str, Any]], ece: float | None, title: str = "Reliability") -> Spec:
    """Per-bin accuracy (bars) against the bin's mean confidence (points) with the diagonal of perfect
    calibration, and the bin counts as a histogram below (Guo et al. 2017, fig. 1)."""
    rows = reliability_bins(bins)
    heading = title + ("" if ece is None else f" — ECE {ece:.4f}")
    x = {"field": "lower", "type": "quantitative", "title": "Confidence", "scale": {"domain": [0, 1]}}
    tooltip = [{"field": k, "type": "quantitative", "format": ".4f"} for k in ("confidence", "accuracy", "count")]
    top = {
        "width": WIDTH,
        "height": 260,
        "layer": [
            _diagonal(),
            {
                "mark": {"type": "rect", "color": BLUE, "opacity": 0.8, "stroke": "white"},
                "encoding": {
                    "x": x,
                    "x2": {"field": "upper"},
                    "y": _unit("Accuracy") | {"field": "accuracy"},
                    "y2": {"datum": 0},
                    "tooltip": tooltip,
                },
            },
            {
                "mark": {"type": "point", "filled": True, "color": ORANGE, "size": 40, "shape": "diamond"},
                "encoding": {
                    "x": {"field": "confidence", "type": "quantitative"},
                    "y": {"field": "accuracy", "type": "quantitative"},
                    "tooltip": tooltip,
                },
            },
        ],
    }
    counts = {
        "width": WIDTH,
        "height": 80,
        "mark": {"type": "rect", "color": SKY, "stroke": "white"},
        "encoding": {
            "x": x,
            "x2": {"field": "upper"},
            "y": {"field": "count", "type": "quantitative", "title": "Rows"},
            "y2": {"datum": 0},
            "tooltip": tooltip,
        },
    }
    description = (
        f"Reliability diagram of {len(rows)} non-empty bins: accuracy per confidence bin against the diagonal"
        + ("" if ece is None else f"; expected calibration error {ece:.4f}")
    )
    return _chart(heading, description, {"data": {"values": rows}, "vconcat": [top, counts]})


def confidence_histogram(bins: Sequence[dict[str, Any]]) -> Spec:
    """Rows per confidence bin split into correct and wrong predictions: a bin's correct rows are its
    count × accuracy (the reliability table holds both), so no row is re-read."""
    rows = []
    for b in reliability_bins(bins):
        correct = b["count"] * b["accuracy"]
        rows += [
            {"lower": b["lower"], "upper": b["upper"], "outcome": "correct", "rows": correct},
            {"lower": b["lower"], "upper": b["upper"], "outcome": "wrong", "rows": b["count"] - correct},
        ]
    return _chart(
        "Confidence, correct and wrong",
        "Histogram of the top-label confidence, stacked by whether the prediction was correct",
        {
            "width": WIDTH,
            "height": 200,
            "data": {"values": rows},
            "mark": {"type": "bar", "stroke": "white"},
            "encoding": {
                "x": {
                    "field": "lower",
                    "type": "quantitative",
                    "title": "Confidence",
                    "bin": {"binned": True},
                    "scale": {"domain": [0, 1]},
                },
                "x2": {"field": "upper"},
                "y": {"field": "rows", "type": "quantitative", "title": "Rows", "stack": "zero"},
                "color": {
                    "field": "outcome",
                    "type": "nominal",
                    "title": "Prediction",
                    "scale": {"domain": ["correct", "wrong"], "range": [GREEN, VERMILLION]},
                },
                "tooltip": [{"field": "outcome"}, {"field": "rows", "type": "quantitative", "format": ".1f"}],
            },
        },
    )


def reliability_overlay(series: Sequence[tuple[str, Sequence[dict[str, Any]]]], title: str) -> Spec:
    """Several reliability tables as accuracy-against-confidence curves on one plot, with the diagonal
    (before and after a calibrator; two evaluations compared)."""
    rows = [b | {"series": label} for label, bins in series for b in reliability_bins(bins)]
    labels = [label for label, _ in series]
    return _chart(
        title,
        "Accuracy against mean confidence per bin for " + ", ".join(labels) + ", with the diagonal",
        {
            "width": WIDTH,
            "height": 300,
            "layer": [
                _diagonal(),
                {
                    "data": {"values": rows},
                    "mark": {"type": "line", "point": True},
                    "encoding": {
                        "x": _unit("Confidence") | {"field": "confidence"},
                        "y": _unit("Accuracy") | {"field": "accuracy"},
                        "color": {
                            "field": "series",
                            "type": "nominal",
                            "title": None,
                            "scale": {"domain": labels, "range": SERIES[: len(labels)]},
                        },
                        "tooltip": [
                            {"field": "series"},
                            {"field": "confidence", "format": ".4f"},
                            {"field": "accuracy", "format": ".4f"},
                            {"field": "count", "format": ".1f"},
                        ],
                    },
                },
            ],
        },
    )


def metric_history(metric: str, points: Sequence[dict[str, Any]]) -> Spec:
    """One metric over a model's evaluations by date: a line through the values, each point coloured by
    the verdict of the newest gate that judged that evaluation ("none" without one), and evaluations
    carrying the highlighted tag drawn as large squares. `points`: created_at, value, id, label,
    verdict, highlighted."""
    return _chart(
        metric,
        f"{metric} of {len(points)} evaluations over time; colour: gate verdict; squares: the highlighted tag",
        {
            "width": 560,
            "height": 200,
            "data": {"values": list(points)},
            "layer": [
                {
                    "mark": {"type": "line", "color": GREY},
                    "encoding": {
                        "x": {"field": "created_at", "type": "temporal", "title": "Evaluated"},
                        "y": {"field": "value", "type": "quantitative", "title": metric, "scale": {"zero": False}},
                    },
                },
                {
                    "mark": {"type": "point", "filled": True, "opacity": 1},
                    "encoding": {
                        "x": {"field": "created_at", "type": "temporal"},
                        "y": {"field": "value", "type": "quantitative"},
                        "color": {
                            "field": "verdict",
                            "type": "nominal",
                            "title": "Gate",
                            "scale": {"domain": list(VERDICTS), "range": list(VERDICTS.values())},
                        },
                        "shape": {
                            "field": "highlighted",
                            "type": "nominal",
                            "title": "Highlighted",
                            "scale": {"domain": [False, True], "range": ["circle", "square"]},
                        },
                        "size": {"condition": {"test": "datum.highlighted", "value": 160}, "value": 60},
                        "href": {"field": "href"},
                        "tooltip": [
                            {"field": "label", "title": "evaluation"},
                            {"field": "value", "format": ".6g"},
                            {"field": "verdict"},
                        ],
                    },
                },
            ],
        },
    )


def gate_intervals(rules: Sequence[dict[str, Any]]) -> Spec:
    """Per rule that compares with the baseline: the tolerated region of candidate − baseline (shaded),
    the change (a point coloured by pass/fail) and its bootstrap interval (an error bar). `rules`: label,
    delta, lower, upper, allowed_lower, allowed_upper, passed (None bounds are open)."""
    return _chart(
        "Changes against the tolerated region",
        f"{len(rules)} rules: candidate minus baseline with its bootstrap interval, against the region each "
        "rule tolerates",
        {
            "width": WIDTH,
            "height": {"step": 28},
            "data": {"values": list(rules)},
            "layer": [
                {
                    "mark": {"type": "bar", "color": GREEN, "opacity": 0.15, "height": {"band": 0.8}},
                    "encoding": {
                        "y": {"field": "label", "type": "nominal", "title": None, "sort": None},
                        "x": {"field": "allowed_lower", "type": "quantitative", "title": "Change"},
                        "x2": {"field": "allowed_upper"},
                    },
                },
                {
                    "mark": {"type": "rule", "strokeWidth": 2, "color": GREY},
                    "encoding": {
                        "y": {"field": "label", "type": "nominal", "sort": None},
                        "x": {"field": "lower", "type": "quantitative"},
                        "x2": {"field": "upper"},
                    },
                },
                {
                    "mark": {"type": "point", "filled": True, "size": 70},
                    "encoding": {
                        "y": {"field": "label", "type": "nominal", "sort": None},
                        "x": {"field": "delta", "type": "quantitative"},
                        "color": {
                            "field": "outcome",
                            "type": "nominal",
                            "title": "Rule",
                            "scale": {"domain": ["passed", "failed"], "range": [GREEN, VERMILLION]},
                        },
                        "tooltip": [
                            {"field": "label"},
                            {"field": "delta", "format": "+.6g"},
                            {"field": "lower", "format": "+.6g"},
                            {"field": "upper", "format": "+.6g"},
                        ],
                    },
                },
                {"mark": {"type": "rule", "color": GREY, "strokeDash": [2, 2]}, "encoding": {"x": {"datum": 0}}},
            ],
        },
    )


def heat_map(matrix: Sequence[Sequence[float | None]], title: str, row: str, column: str, fmt: str) -> Spec:
    """A matrix as coloured cells with their values written in (a confusion matrix, a calibrator's weights)."""
    cells = [
        {"row": i, "column": j, "value": value}
        for i, values in enumerate(matrix)
        for j, value in enumerate(values)
        if value is not None
    ]
    size = max(12, min(36, 480 // max(1, len(matrix))))
    encoding = {
        "x": {"field": "column", "type": "ordinal", "title": column},
        "y": {"field": "row", "type": "ordinal", "title": row},
    }
    layers: list[Spec] = [
        {
            "mark": "rect",
            "encoding": encoding
            | {
                "color": {"field": "value", "type": "quantitative", "title": None, "scale": {"scheme": "viridis"}},
                "tooltip": [{"field": "row"}, {"field": "column"}, {"field": "value", "format": fmt}],
            },
        },
    ]
    if len(matrix) <= 20:
        layers.append(
            {
                "mark": {"type": "text", "fontSize": 10},
                "encoding": encoding
                | {
                    "text": {"field": "value", "format": fmt},
                    "color": {"condition": {"test": "datum.value_scaled > 0.5", "value": "black"}, "value": "white"},
                },
                "transform": [
                    {"joinaggregate": [{"op": "max", "field": "value", "as": "value_max"}]},
                    {"calculate": "datum.value / (datum.value_max || 1)", "as": "value_scaled"},
                ],
            }
        )
    n_columns = max((len(r) for r in matrix), default=0)
    return _chart(
        title,
        f"Heat map of a {len(matrix)} × {n_columns} matrix ({row} by {column})",
        {"width": size * n_columns, "height": size * len(matrix), "data": {"values": cells}, "layer": layers},
    )


def per_class_bars(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> Spec:
    """Grouped bars of per-class values (precision, recall, F1): `rows` have `class` and each metric."""
    values = [{"class": r["class"], "metric": m, "value": r[m]} for r in rows for m in metrics if r.get(m) is not None]
    return _chart(
        "Per class",
        f"{', '.join(metrics)} for each of {len(rows)} classes",
        {
            "data": {"values": values},
            "width": {"step": 14},
            "height": 180,
            "mark": "bar",
            "encoding": {
                "x": {"field": "class", "type": "ordinal", "title": "Class"},
                "xOffset": {"field": "metric"},
                "y": _unit("Value") | {"field": "value"},
                "color": {
                    "field": "metric",
                    "type": "nominal",
                    "title": None,
                    "scale": {"domain": list(metrics), "range": SERIES[: len(metrics)]},
                },
                "tooltip": [{"field": "class"}, {"field": "metric"}, {"field": "value", "format": ".4f"}],
            },
        },
    )


def score_histograms(histogram: dict[str, Sequence[float]]) -> Spec:
    """In- and out-of-distribution detector scores over shared bins, each as a share of its own rows (the
    two sets differ in size), overlaid; the stored end bins also hold the scores beyond them."""
    edges, n = histogram["edges"], {side: sum(histogram[side]) or 1.0 for side in ("in", "out")}
    labels = {"in": "in-distribution", "out": "out-of-distribution"}
    rows = [
        {"lower": edges[i], "upper": edges[i + 1], "set": labels[side], "share": count / n[side], "rows": count}
        for side in ("in", "out")
        for i, count in enumerate(histogram[side])
    ]
    return _chart(
        "Detector scores, in and out of distribution",
        f"Overlaid histograms of {len(edges) - 1} bins: the share of in- and of out-of-distribution samples per "
        "score bin (higher score: more out of distribution)",
        {
            "width": WIDTH,
            "height": 220,
            "data": {"values": rows},
            "mark": {"type": "rect", "opacity": 0.55, "stroke": "white", "strokeWidth": 0.5},
            "encoding": {
                "x": {"field": "lower", "type": "quantitative", "title": "Score (higher: more OOD)"},
                "x2": {"field": "upper"},
                "y": {"field": "share", "type": "quantitative", "title": "Share of the set", "stack": None},
                "y2": {"datum": 0},
                "color": {
                    "field": "set",
                    "type": "nominal",
                    "title": None,
                    "scale": {"domain": list(labels.values()), "range": [BLUE, ORANGE]},
                },
                "tooltip": [
                    {"field": "set"},
                    {"field": "lower", "format": ".4g"},
                    {"field": "upper", "format": ".4g"},
                    {"field": "rows", "format": ".0f"},
                ],
            },
        },
    )


def roc_curve(roc: dict[str, Sequence[float]], at_95: dict[str, float], auroc: float | None) -> Spec:
    """The ROC curve with in-distribution positive (x: OOD samples accepted, y: ID samples kept), the chance
    diagonal, and the vertex FPR@95 reads marked (its x is the metric)."""
    points = [{"i": i, "fpr": f, "tpr": t} for i, (f, t) in enumerate(zip(roc["fpr"], roc["tpr"], strict=True))]
    heading = "ROC" + ("" if auroc is None else f" — AUROC {auroc:.4f}")
    mark = {"fpr": at_95["fpr"], "tpr": at_95["tpr"], "label": f"FPR@95 {at_95['fpr']:.4f}"}
    return _chart(
        heading,
        f"ROC curve of {len(points)} points, in-distribution positive; FPR at 95% TPR is {at_95['fpr']:.4f}",
        {
            "width": 320,
            "height": 320,
            "layer": [
                _diagonal(),
                {
                    "data": {"values": points},
                    "mark": {"type": "line", "color": BLUE, "interpolate": "linear"},
                    "encoding": {
                        "x": _unit("OOD samples accepted (FPR)") | {"field": "fpr"},
                        "y": _unit("In-distribution samples kept (TPR)") | {"field": "tpr"},
                        "order": {"field": "i", "type": "quantitative"},  # the curve's own order
                    },
                },
                {
                    "data": {"values": [mark]},
                    "layer": [
                        {
                            "mark": {"type": "point", "filled": True, "color": VERMILLION, "size": 90},
                            "encoding": {
                                "x": {"field": "fpr", "type": "quantitative"},
                                "y": {"field": "tpr", "type": "quantitative"},
                                "tooltip": [
                                    {"field": "fpr", "format": ".4f", "title": "FPR"},
                                    {"field": "tpr", "format": ".4f", "title": "TPR"},
                                ],
                            },
                        },
                        {
                            "mark": {"type": "text", "align": "left", "dx": 8, "dy": 12, "color": VERMILLION},
                            "encoding": {
                                "x": {"field": "fpr", "type": "quantitative"},
                                "y": {"field": "tpr", "type": "quantitative"},
                                "text": {"field": "label"},
                            },
                        },
                    ],
                },
            ],
        },
    )

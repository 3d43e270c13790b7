"""The web report over HTTP (api.md, "Web report"): every page kind answers HTML drawn from what is stored
(the Vega-Lite data each plot is given equals the stored reliability table, gate results and metric values),
filters and pagination work without JavaScript, unknown ids and bad filters are 404/422 pages, and the
standalone report inlines every asset. The plots themselves are checked in a browser (test_ui_browser)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import precision_recall_fscore_support, roc_curve

from app.core.ood_metrics import roc_points, score_histograms, separation
from app.gating.rules import tolerated
from app.report import charts
from app.report.pages import per_class_from_confusion, row_normalised
from tests import onnx_models


class _Specs(HTMLParser):
    """The Vega-Lite specs a page embeds (one JSON script per figure), and every external URL it loads."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[dict[str, Any]] = []
        self.sources: list[str] = []
        self._in_spec = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self._in_spec = tag == "script" and found.get("type") == "application/json"
        if tag in ("script", "img") and found.get("src"):
            self.sources.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.sources.append(str(found["href"]))

    def handle_data(self, data: str) -> None:
        if self._in_spec:
            self.specs.append(json.loads(data))
            self._in_spec = False


def parsed(html: str) -> _Specs:
    found = _Specs()
    found.feed(html)
    return found


def populate(client: TestClient) -> dict[str, str]:
    """What the README's examples leave behind: two evaluations of one model (the older tagged prod) with a
    confusion matrix, per-class F1 and slices, a gate between them with bootstrap intervals, a calibrator
    with a validation split and a detector."""
    rng = np.random.default_rng(3)
    n, c = 600, 4
    labels = rng.integers(0, c, n)
    region = np.where(rng.random(n) < 0.5, "north", "south")
    metrics: list[Any] = ["accuracy", "nll", "ece", {"name": "f1", "average": "none", "key": "f1_per_class"},
                          "confusion_matrix", "f1"]  # fmt: skip
    ids: dict[str, str] = {}
    versions = (("baseline", 1.5, {"git_sha": "aaa111", "prod": ""}), ("candidate", 2.5, {"git_sha": "bbb222"}))
    for name, scale, tags in versions:
        logits = rng.normal(size=(n, c)) + scale * np.eye(c)[labels]
        response = client.post("/v1/evaluations", json={
            "logits": logits.tolist(), "labels": labels.tolist(), "metrics": metrics, "model": "resnet",
            "dataset": "cifar-test", "tags": tags, "slices": {"region": region.tolist()},
        })  # fmt: skip
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    gate = client.post("/v1/gates", json={
        "candidate": ids["candidate"], "baseline": ids["baseline"], "significance": 0.9, "resamples": 200,
        "rules": [{"metric": "ece", "op": "max_increase_abs", "value": 0.01},
                  {"metric": "accuracy", "op": "max_decrease_abs", "value": 0.02, "severity": "warn"},
                  {"metric": "accuracy", "op": "min", "value": 0.3}],
    })  # fmt: skip
    assert gate.status_code == 201, gate.text
    ids["gate"] = gate.json()["id"]
    z = rng.normal(size=(400, c)) * 3 + 2 * np.eye(c)[(y := rng.integers(0, c, 400))]
    calibrator = client.post("/v1/calibrators", json={
        "method": "matrix_scaling", "logits": z[:300].tolist(), "labels": y[:300].tolist(),
        "validation": {"logits": z[300:].tolist(), "labels": y[300:].tolist()},
    })  # fmt: skip
    assert calibrator.status_code == 201, calibrator.text
    ids["calibrator"] = calibrator.json()["id"]
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64)
    files = {"file": ("mlp.onnx", data, "application/octet-stream")}
    upload = client.post("/v1/models", files=files, data={"request": json.dumps({
        "name": "mlp", "embedding_output": "embedding"})})  # fmt: skip
    assert upload.status_code == 201, upload.text
    model_id = upload.json()["id"]
    x = rng.normal(size=(500, 6))
    detector = client.post("/v1/detectors", json={
        "method": "mahalanobis", "model_id": model_id, "inputs": {"x": x[:300].tolist()},
        "labels": rng.integers(0, 3, 300).tolist(), "params": {"ridge": 0.1},
    })  # fmt: skip
    assert detector.status_code == 201, detector.text
    ids["detector"] = detector.json()["id"]
    separated = client.post(f"/v1/models/{model_id}/evaluations", json={
        "inputs": {"x": x[300:].tolist()}, "labels": rng.integers(0, 3, 200).tolist(),
        "detector_id": ids["detector"], "ood_inputs": {"x": (rng.normal(size=(150, 6)) * 2 + 1.5).tolist()},
    })  # fmt: skip
    assert separated.status_code == 201, separated.text
    ids["ood"] = separated.json()["id"]
    return ids


def page(client: TestClient, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def test_every_page_kind_is_drawn_from_what_is_stored(client: TestClient) -> None:
    ids = populate(client)
    stored = client.get(f"/v1/evaluations/{ids['candidate']}").json()
    html = page(client, f"/ui/evaluations/{ids['candidate']}")
    specs = {s["title"] if isinstance(s["title"], str) else "": s for s in parsed(html).specs}
    reliability = next(s for t, s in specs.items() if t.startswith("Reliability"))
    drawn = reliability["data"]["values"]
    non_empty = [b for b in stored["reliability"]["bins"] if b["count"] > 0]
    assert [(b["lower"], b["count"], b["accuracy"]) for b in drawn] == [
        (b["lower"], b["count"], b["accuracy"]) for b in non_empty
    ]
    assert f"ECE {stored['metrics']['ece']:.4f}" in reliability["title"]
    histogram = specs["Confidence, correct and wrong"]["data"]["values"]
    assert sum(r["rows"] for r in histogram) == pytest.approx(stored["n"])
    correct = sum(r["rows"] for r in histogram if r["outcome"] == "correct")
    assert correct == pytest.approx(stored["metrics"]["accuracy"] * stored["n"])
    confusion = specs["Confusion matrix"]["data"]["values"]
    assert sum(cell["value"] for cell in confusion) == stored["n"]
    per_class = specs["Per class"]["data"]["values"]
    f1 = {r["class"]: r["value"] for r in per_class if r["metric"] == "f1"}
    assert [f1[k] for k in sorted(f1)] == pytest.approx(stored["metrics"]["f1_per_class"])
    for group in ("north", "south"):  # the slice table, worst accuracy first
        assert f">{group}<" in html
    accuracies = [stored["slices"]["region"][g]["metrics"]["accuracy"] for g in ("north", "south")]
    first = "north" if accuracies[0] <= accuracies[1] else "south"
    slice_section = html[html.index("<h2>Slices</h2>") :]
    assert slice_section.index(f">{first}<") < slice_section.index(f">{'south' if first == 'north' else 'north'}<")
    assert f"/ui/gates/{ids['gate']}" in html
    groups = {s["title"].split(" — ")[0]: s for s in parsed(html).specs if str(s["title"]).startswith("region = ")}
    for group in ("north", "south"):  # each group's diagram: its own rows only; not in the API's answer
        bins = groups[f"region = {group}"]["data"]["values"]
        assert sum(b["count"] for b in bins) == stored["slices"]["region"][group]["n"]
        assert "reliability" not in stored["slices"]["region"][group]

    gate = client.get(f"/v1/gates/{ids['gate']}").json()
    html = page(client, f"/ui/gates/{ids['gate']}")
    (intervals,) = parsed(html).specs
    rows = intervals["layer"][0]["data"]["values"] if "data" in intervals["layer"][0] else intervals["data"]["values"]
    assert [r["delta"] for r in rows] == [r["delta"] for r in gate["rules"] if r["delta"] is not None]
    assert [[r["lower"], r["upper"]] for r in rows] == [r["interval"] for r in gate["rules"] if r["delta"] is not None]
    assert rows[0]["allowed_upper"] == pytest.approx(0.01) and rows[1]["allowed_lower"] == pytest.approx(-0.02)
    assert gate["verdict"] in html and "min 0.3" in html  # the min rule: in the table, not the chart

    html = page(client, "/ui/models/resnet?metric=accuracy&metric=ece")
    history = {s["title"]: s for s in parsed(html).specs}
    assert set(history) == {"accuracy", "ece"}
    points = history["accuracy"]["data"]["values"]
    assert [p["id"] for p in points] == [ids["baseline"], ids["candidate"]]  # by date, oldest first
    assert [p["highlighted"] for p in points] == [True, False] and points[1]["verdict"] == gate["verdict"]
    assert points[1]["value"] == stored["metrics"]["accuracy"]

    calibrator = client.get(f"/v1/calibrators/{ids['calibrator']}").json()
    html = page(client, f"/ui/calibrators/{ids['calibrator']}")
    specs = {s["title"]: s for s in parsed(html).specs}
    fit = specs["Reliability before and after, on the fit data"]["layer"][1]["data"]["values"]
    before = [b for b in calibrator["fit_report"]["reliability"]["fit"]["before"] if b["count"] > 0]
    assert [r["accuracy"] for r in fit if r["series"] == "before"] == [b["accuracy"] for b in before]
    assert "Reliability before and after, on the validation split" in specs
    weights = specs["Fitted weights"]["data"]["values"]
    assert len(weights) == 16 and weights[1]["value"] == calibrator["fitted"]["weights"][0][1]

    html = page(client, f"/ui/compare?a={ids['baseline']}&b={ids['candidate']}")
    (overlay,) = parsed(html).specs
    assert {r["series"] for r in overlay["layer"][1]["data"]["values"]} == {"A", "B"}
    assert "paired-bootstrap" in html and f"/ui/gates/{ids['gate']}" in html
    judged = client.post("/v1/gates", json={
        "candidate": ids["candidate"], "baseline": ids["baseline"], "significance": 0.95, "resamples": 1000,
        "rules": [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.0}]})  # fmt: skip
    low, high = judged.json()["rules"][0]["interval"]
    assert "<td>accuracy</td>" in html and f"[{low:+.4g}, {high:+.4g}]" in html  # the gate's own interval
    unpaired = page(client, f"/ui/compare?a={ids['ood']}&b={ids['candidate']}")
    assert "no paired intervals" in unpaired and "% interval</th>" not in unpaired

    separated = client.get(f"/v1/evaluations/{ids['ood']}").json()
    assert separated["detector_id"] == ids["detector"] and "ood_plots" not in separated
    for path in (f"/ui/ood/{ids['ood']}", f"/ui/detectors/{ids['detector']}", f"/ui/evaluations/{ids['ood']}"):
        specs = {s["title"].split(" — ")[0]: s for s in parsed(page(client, path)).specs}
        shares = specs["Detector scores, in and out of distribution"]["data"]["values"]
        for side, n in (("in-distribution", 200), ("out-of-distribution", 150)):
            assert sum(r["rows"] for r in shares if r["set"] == side) == n
            assert sum(r["share"] for r in shares if r["set"] == side) == pytest.approx(1.0)
        roc = specs["ROC"]
        assert f"AUROC {separated['ood']['auroc']:.4f}" in roc["title"]
        (marked,) = roc["layer"][2]["data"]["values"]
        assert marked["fpr"] == separated["ood"]["fpr_at_95_tpr"] and marked["tpr"] >= 0.95
        curve = roc["layer"][1]["data"]["values"]
        area = np.trapezoid([p["tpr"] for p in curve], [p["fpr"] for p in curve])
        assert area == pytest.approx(separated["ood"]["auroc"], abs=2 / 400)
    assert f"/ui/ood/{ids['ood']}" in page(client, f"/ui/detectors/{ids['detector']}")
    page(client, f"/ui/ood/{ids['candidate']}", 404)  # an evaluation without a separation

    for path in ("/ui/", "/ui/evaluations", "/ui/models", "/ui/gates", "/ui/calibrators", "/ui/detectors",
                 f"/ui/detectors/{ids['detector']}"):  # fmt: skip
        html = page(client, path)
        assert "<h1>" in html
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"


def test_the_list_filters_and_pages_without_javascript(client: TestClient) -> None:
    ids = populate(client)
    html = page(client, "/ui/evaluations?tag=prod")
    assert ids["baseline"] in html and ids["candidate"] not in html
    html = page(client, "/ui/evaluations?tag=git_sha:bbb222&model=resnet&dataset=cifar-test")
    assert ids["candidate"] in html and ids["baseline"] not in html
    assert ids["baseline"] not in page(client, "/ui/evaluations?model=other")
    today = client.get(f"/v1/evaluations/{ids['baseline']}").json()["created_at"][:10]
    assert ids["baseline"] in page(client, f"/ui/evaluations?since={today}&until={today}")
    assert ids["baseline"] not in page(client, "/ui/evaluations?until=2000-01-01")
    html = page(client, "/ui/evaluations?since=yesterday", 422)
    assert "since" in html and "YYYY-MM-DD" in html
    first = page(client, "/ui/evaluations?limit=1")
    assert first.count("/ui/evaluations/") >= 1
    older = re.search(r'href="(/ui/evaluations\?[^"]*cursor=[^"]+)"', page(client, "/ui/evaluations?model=resnet"))
    assert older is None  # two evaluations fit one page: no link to an empty one


def test_unknown_ids_are_404_pages_and_compare_needs_two(client: TestClient) -> None:
    for kind in ("evaluations", "gates", "calibrators", "detectors"):
        html = page(client, f"/ui/{kind}/{'0' * 32}", 404)
        assert "Not found" in html
    assert "no evaluation or model" in page(client, "/ui/models/nobody", 404)
    assert "two evaluation ids" in page(client, "/ui/compare?a=x", 422)
    assert client.get(f"/v1/evaluations/{'0' * 32}/report.html").status_code == 404


def test_the_standalone_report_inlines_every_asset(client: TestClient) -> None:
    ids = populate(client)
    response = client.get(f"/v1/evaluations/{ids['candidate']}/report.html")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    found = parsed(response.text)
    assert found.sources == []  # no <script src>, <link href> or <img src>: it opens offline
    assert "window.vegaEmbed" in response.text and len(found.specs) >= 4
    html = response.text  # every script element ends where it should: as many closers as openers
    assert html.count("<script") == html.lower().count("</script") == len(found.specs) + 2


def test_an_inlined_script_cannot_end_its_element() -> None:
    from app.report.assets import inline_script

    written = inline_script('a = "</script>"; b = /</g; c = "</SCRIPT "')
    assert written == 'a = "<\\/script>"; b = /</g; c = "<\\/SCRIPT "'
    with pytest.raises(ValueError, match="<!--"):
        inline_script('x = "<!--"')


def test_chart_data_against_independent_oracles() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = int(rng.integers(2, 8))
        y, p = rng.integers(0, c, 300), rng.integers(0, c, 300)
        matrix = np.zeros((c, c))
        np.add.at(matrix, (y, p), 1)
        ours = per_class_from_confusion(matrix.tolist())
        precision, recall, f1, _ = precision_recall_fscore_support(y, p, labels=range(c), average=None, zero_division=0)
        np.testing.assert_allclose(ours["precision"], precision, rtol=1e-12)
        np.testing.assert_allclose(ours["recall"], recall, rtol=1e-12)
        np.testing.assert_allclose(ours["f1"], f1, rtol=1e-12)
        normalised = np.array(row_normalised(matrix.tolist()), dtype=float)
        np.testing.assert_allclose(np.nansum(normalised, axis=1)[matrix.sum(axis=1) > 0], 1.0)
    bins = [{"lower": 0.5, "upper": 0.75, "count": 8.0, "confidence": 0.6, "accuracy": 0.25},
            {"lower": 0.75, "upper": 1.0, "count": 0.0, "confidence": None, "accuracy": None}]  # fmt: skip
    assert charts.reliability_bins(bins) == [bins[0] | {"gap": pytest.approx(0.35)}]
    split = charts.confidence_histogram(bins)["data"]["values"]
    assert [r["rows"] for r in split] == [2.0, 6.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ood_plot_data_against_scikit_learn(dtype: type) -> None:
    """The thinned ROC keeps only vertices of scikit-learn's exact curve (ID positive, no dropped
    thresholds), its ends, and an area within its stated bound; histograms count every score once."""
    rng = np.random.default_rng(5)
    for n_in, n_out in ((50, 30), (3000, 2000)):
        outlier_in = rng.normal(size=n_in).astype(dtype).astype(np.float64)
        outlier_out = (rng.normal(size=n_out) * 2 + 1).astype(dtype).astype(np.float64)
        outlier_out[:5] = outlier_in[:5]  # ties between the sets
        fpr, tpr, _ = roc_curve(np.r_[np.ones(n_in), np.zeros(n_out)], -np.r_[outlier_in, outlier_out],
                                drop_intermediate=False)  # fmt: skip
        points = roc_points(outlier_in, outlier_out)
        exact = set(zip(fpr.tolist(), tpr.tolist(), strict=True)) | {(0.0, 0.0)}
        assert set(zip(points["fpr"], points["tpr"], strict=True)) <= exact
        assert (points["fpr"][0], points["tpr"][0], points["fpr"][-1], points["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
        assert len(points["fpr"]) <= 401 and (len(fpr) > 401 or len(points["fpr"]) == len(exact))
        area = np.trapezoid(points["tpr"], points["fpr"])
        assert area == pytest.approx(separation(outlier_in, outlier_out)["auroc"], abs=2 / 400)
        histogram = score_histograms(outlier_in, outlier_out)
        assert sum(histogram["in"]) == n_in and sum(histogram["out"]) == n_out
        inner = (outlier_in > histogram["edges"][0]) & (outlier_in < histogram["edges"][-1])
        counted, _ = np.histogram(outlier_in[inner], histogram["edges"])
        assert (np.array(histogram["in"]) >= counted).all()  # end bins also hold the tails


@pytest.mark.parametrize(
    ("op", "value", "baseline", "direction", "region"),
    [
        ("max_increase_abs", 0.01, 0.2, -1, (None, 0.01)),
        ("max_increase_rel", 0.1, -0.5, -1, (None, 0.05)),
        ("max_decrease_abs", 0.02, 0.9, 1, (-0.02, None)),
        ("max_decrease_rel", 0.1, 0.8, 1, (-0.08, None)),
        ("min_improvement_abs", 0.01, 0.9, 1, (0.01, None)),
        ("min_improvement_abs", 0.01, 0.1, -1, (None, -0.01)),
        ("min", 0.5, 0.9, 1, (None, None)),
    ],
)
def test_the_tolerated_region_agrees_with_the_rule(
    op: Any, value: float, baseline: float, direction: int, region: tuple[float | None, float | None]
) -> None:
    """The shaded region is exactly the changes `rules.check` passes (checked on both sides of its edge)."""
    from app.gating.rules import check

    got = tolerated(op, value, baseline, direction)
    assert got == pytest.approx(region)
    for edge in [e for e in got if e is not None]:
        for delta in (edge - 1e-6, edge + 1e-6):
            inside = (got[0] is None or delta >= got[0]) and (got[1] is None or delta <= got[1])
            assert check(op, value, baseline + delta, baseline, direction).passed == inside

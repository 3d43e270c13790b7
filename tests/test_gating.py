"""Gates: rule semantics, bootstrap intervals, the API, and the `caliper gate` CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from caliper_client import CaliperClient
from fastapi.testclient import TestClient

from app.core.bootstrap import RowValues, bootstrap_difference, percentile_interval, point
from app.core.metrics import uniform_bins
from app.gating.rules import check
from app.gating.service import higher_is_better
from app.storage.models import Evaluation
from tests.test_api_bad_input import assert_problem
from tests.test_ui import parsed

# ---- rule semantics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "candidate", "baseline", "direction", "passed"),
    [
        ("min", 0.9, 0.91, None, 1, True),
        ("min", 0.9, 0.89, None, 1, False),
        ("max", 0.05, 0.04, None, -1, True),
        ("max", 0.05, 0.06, None, -1, False),
        ("max_increase_abs", 0.01, 0.105, 0.1, -1, True),
        ("max_increase_abs", 0.01, 0.12, 0.1, -1, False),
        ("max_increase_rel", 0.1, 0.109, 0.1, -1, True),
        ("max_increase_rel", 0.1, 0.111, 0.1, -1, False),
        ("max_decrease_abs", 0.01, 0.895, 0.9, 1, True),
        ("max_decrease_abs", 0.01, 0.88, 0.9, 1, False),
        ("max_decrease_rel", 0.05, 0.86, 0.9, 1, True),
        ("max_decrease_rel", 0.05, 0.85, 0.9, 1, False),
        ("min_improvement_abs", 0.01, 0.92, 0.9, 1, True),
        ("min_improvement_abs", 0.01, 0.905, 0.9, 1, False),
        ("min_improvement_abs", 0.01, 0.08, 0.1, -1, True),
        ("min_improvement_abs", 0.01, 0.095, 0.1, -1, False),
        ("min_improvement_rel", 0.1, 0.085, 0.1, -1, True),
        ("min_improvement_rel", 0.1, 0.095, 0.1, -1, False),
    ],
)
def test_each_op_in_both_directions(
    op: Any, value: float, candidate: float, baseline: float | None, direction: int, passed: bool
) -> None:
    assert check(op, value, candidate, baseline, direction).passed is passed


def test_relative_change_at_baseline_zero() -> None:
    assert check("max_increase_rel", 0.1, 0.0, 0.0, -1).passed  # no change: 0
    outcome = check("max_increase_rel", 0.1, 0.01, 0.0, -1)
    assert not outcome.passed and "inf" in outcome.reason
    assert check("max_decrease_rel", 0.1, 0.01, 0.0, 1).passed  # +inf change is not a decrease


def test_missing_metric_fails_with_a_reason() -> None:
    assert not check("max", 1.0, None, 0.5, -1).passed
    outcome = check("max_increase_abs", 1.0, 0.5, None, -1)
    assert not outcome.passed and "baseline has no value" in outcome.reason


def test_intervals_make_tolerance_rules_lenient_and_improvement_rules_strict() -> None:
    # point change +0.02 exceeds a 0.01 tolerance, but the interval reaches below it: not shown to be worse
    assert check("max_increase_abs", 0.01, 0.12, 0.1, -1, interval=(0.005, 0.035)).passed
    assert not check("max_increase_abs", 0.01, 0.12, 0.1, -1, interval=(0.011, 0.035)).passed
    # a point improvement of 0.02 ≥ 0.01, but the interval does not show it everywhere
    assert not check("min_improvement_abs", 0.01, 0.92, 0.9, 1, interval=(-0.005, 0.04)).passed
    assert check("min_improvement_abs", 0.01, 0.92, 0.9, 1, interval=(0.012, 0.04)).passed


def test_better_directions_come_from_the_metric_definitions() -> None:
    record = Evaluation(
        parameters={
            "losses": [{"name": "brier", "key": "accuracy"}],
            "metrics": [{"name": "accuracy"}, {"name": "ece"}, {"name": "nll", "key": "auroc"}],
        }
    )
    assert higher_is_better(record, "metric", "accuracy") and not higher_is_better(record, "metric", "ece")
    assert not higher_is_better(record, "loss", "accuracy")  # a loss keyed "accuracy" is still a loss
    assert not higher_is_better(record, "metric", "auroc")  # an NLL under a custom key is still an NLL
    assert higher_is_better(record, "metric", "sdm_hr_coverage")
    assert not higher_is_better(record, "metric", "sdm_ood_share")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_bootstrap_bins_with_the_metric_fragment(dtype: type) -> None:
    """The ECE resampled by the gate bins by the metric's own fragment: min(floor(p·B), B − 1) in float64,
    checked here against numpy on random confidences and on every bin edge (where a float32 product
    could round across)."""
    bins = 15
    rng = np.random.default_rng(0)
    confidence = np.concatenate([rng.random(1000), np.arange(bins + 1) / bins]).astype(dtype)
    expected = np.minimum(np.floor(confidence.astype(np.float64) * bins), bins - 1).astype(np.int64)
    np.testing.assert_array_equal(uniform_bins(confidence, bins), expected)


# ---- bootstrap ------------------------------------------------------------------------------------------


def test_identical_models_give_an_interval_around_zero_and_seeds_reproduce() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(5000) < 0.8).astype(float)
    reps = bootstrap_difference(RowValues("mean", a), RowValues("mean", a), True, 500, seed=3)
    assert np.all(reps == 0)
    b = (rng.random(5000) < 0.8).astype(float)
    one = bootstrap_difference(RowValues("mean", a), RowValues("mean", b), True, 300, seed=7)
    two = bootstrap_difference(RowValues("mean", a), RowValues("mean", b), True, 300, seed=7)
    np.testing.assert_array_equal(one, two)
    low, high = percentile_interval(bootstrap_difference(RowValues("mean", a), RowValues("mean", b), False, 1000), 0.95)
    assert low < a.mean() - b.mean() < high


def test_paired_interval_covers_the_true_difference_at_about_the_nominal_rate() -> None:
    """Simulated: two models right with probability 0.80 and 0.78 on the same rows (correlated).
    Over 100 datasets the 90% interval must cover the true difference 0.02 between 80% and 98% of the
    time (binomial 99.9% band for 100 trials at p = 0.9 is about [0.79, 0.98])."""
    rng = np.random.default_rng(42)
    covered = 0
    for trial in range(100):
        u = rng.random(2000)
        a = (u < 0.80).astype(float)
        b = (np.where(rng.random(2000) < 0.5, u, rng.random(2000)) < 0.78).astype(float)
        low, high = percentile_interval(
            bootstrap_difference(RowValues("mean", a), RowValues("mean", b), True, 400, seed=trial), 0.90
        )
        covered += low <= 0.02 <= high
    assert 79 <= covered <= 98, covered


def test_ece_bootstrap_uses_the_pinned_binning() -> None:
    rng = np.random.default_rng(1)
    conf = rng.random(3000) * 0.5 + 0.5
    correct = (rng.random(3000) < conf - 0.1).astype(float)
    values = RowValues("ece", confidence=conf, correct=correct, bins=15)
    index = np.minimum(np.floor(conf * 15), 14).astype(int)
    expected = sum(abs(correct[index == b].sum() - conf[index == b].sum()) for b in range(15)) / 3000
    assert math.isclose(point(values), expected, rel_tol=1e-12)


# ---- API ------------------------------------------------------------------------------------------------


def evaluation(client: TestClient, logits: np.ndarray, labels: np.ndarray, **extra: Any) -> str:
    body = {
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "losses": ["cross_entropy", "brier"],
        "metrics": ["accuracy", "nll", "brier", "ece"],
        **extra,
    }
    response = client.post("/v1/evaluations", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def two_models(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    good = rng.normal(size=(n, 3))
    good[np.arange(n), labels] += 2.5
    worse = good + rng.normal(size=(n, 3)) * 1.5
    return good, worse, labels


def test_gate_verdicts_and_paired_significance(client: TestClient) -> None:
    good, worse, labels = two_models()
    baseline = evaluation(client, good, labels, model="m", tags={"stage": "prod"})
    candidate = evaluation(client, worse, labels, model="m")
    rules = [
        {"metric": "accuracy", "op": "max_decrease_abs", "value": 0.02},
        {"metric": "ece", "op": "max_increase_abs", "value": 0.5, "severity": "warn"},
        {"metric": "nll", "op": "max", "value": 10.0},
    ]
    response = client.post(
        "/v1/gates",
        json={"candidate": candidate, "baseline": {"tag": "stage:prod"}, "rules": rules, "significance": 0.95},
    )
    assert response.status_code == 201, response.text
    gate = response.json()
    assert gate["baseline"] == baseline and gate["bootstrap"] == "paired"
    accuracy_rule = gate["rules"][0]
    assert accuracy_rule["interval"] is not None and accuracy_rule["interval"][1] < -0.02  # clearly worse
    assert gate["verdict"] == "fail" and not accuracy_rule["passed"]
    assert client.get(f"/v1/gates/{gate['id']}").json()["verdict"] == "fail"
    assert [g["id"] for g in client.get("/v1/gates", params={"candidate": candidate}).json()["items"]] == [gate["id"]]


def test_warn_only_failures_give_warn_and_missing_metrics_fail(client: TestClient) -> None:
    good, worse, labels = two_models(1)
    baseline = evaluation(client, good, labels)
    candidate = evaluation(client, worse, labels)
    warn = client.post(
        "/v1/gates",
        json={
            "candidate": candidate,
            "baseline": baseline,
            "rules": [{"metric": "accuracy", "op": "min_improvement_abs", "value": 0.0, "severity": "warn"}],
        },
    ).json()
    assert warn["verdict"] == "warn"
    missing = client.post(
        "/v1/gates",
        json={"candidate": candidate, "baseline": baseline, "rules": [{"metric": "auroc", "op": "min", "value": 0.5}]},
    ).json()
    assert missing["verdict"] == "fail" and "no value" in missing["rules"][0]["reason"]


def test_different_datasets_are_bootstrapped_unpaired(client: TestClient) -> None:
    good, worse, labels = two_models(2)
    baseline = evaluation(client, good, labels)
    candidate = evaluation(client, worse[:300], labels[:300])
    gate = client.post(
        "/v1/gates",
        json={
            "candidate": candidate,
            "baseline": baseline,
            "significance": 0.9,
            "rules": [{"metric": "ece", "op": "max_increase_abs", "value": 0.01}],
        },
    ).json()
    assert gate["bootstrap"] == "unpaired" and gate["rules"][0]["interval"] is not None


def test_promote_then_select_by_tag_and_bad_gates(client: TestClient) -> None:
    good, worse, labels = two_models(3)
    first = evaluation(client, good, labels, model="m")
    second = evaluation(client, worse, labels, model="m")
    tagged = client.post(f"/v1/evaluations/{first}/tags", json={"tags": {"prod": "true"}})
    assert tagged.status_code == 200 and tagged.json()["tags"] == {"prod": "true"}
    gate = client.post(
        "/v1/gates",
        json={
            "candidate": second,
            "baseline": {"model": "m", "tag": "prod"},
            "rules": [{"metric": "accuracy", "op": "min", "value": 0}],
        },
    ).json()
    assert gate["baseline"] == first
    assert_problem(
        client.post(
            "/v1/gates",
            json={"candidate": "nope", "baseline": first, "rules": [{"metric": "accuracy", "op": "min", "value": 0}]},
        ),
        404,
    )
    assert_problem(
        client.post(
            "/v1/gates",
            json={
                "candidate": second,
                "baseline": {"tag": "nobody"},
                "rules": [{"metric": "accuracy", "op": "min", "value": 0}],
            },
        ),
        404,
    )
    assert_problem(
        client.post(
            "/v1/gates",
            json={
                "candidate": second,
                "baseline": first,
                "rules": [{"metric": "accuracy", "op": "sideways", "value": 0}],
            },
        ),
        422,
        "rules",
    )
    assert_problem(
        client.post(
            "/v1/gates",
            json={"candidate": second, "baseline": second, "rules": [{"metric": "accuracy", "op": "min", "value": 0}]},
        ),
        422,
        "baseline",
    )
    assert_problem(client.post("/v1/gates", json={"candidate": second, "baseline": first, "rules": []}), 422, "rules")
    assert_problem(client.post("/v1/evaluations/nope/tags", json={"tags": {"prod": "true"}}), 404)


# ---- CLI ------------------------------------------------------------------------------------------------

POLICY = """
significance = 0.95
resamples = 500
[[rules]]
metric = "accuracy"
op = "max_decrease_abs"
value = 0.02
[[rules]]
metric = "ece"
op = "max_increase_abs"
value = 0.5
severity = "warn"
"""


def caliper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CALIPER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'var' / 'gate.db'}"
    assert caliper("db", "upgrade", env=env).returncode == 0
    return env


def test_cli_gate_in_process_and_over_http_agree(cli_env: dict[str, str], tmp_path: Path) -> None:
    good, worse, labels = two_models(4)
    (tmp_path / "gate.toml").write_text(POLICY)
    np.savez(tmp_path / "good.npz", logits=good, labels=labels)
    np.savez(tmp_path / "worse.npz", logits=worse, labels=labels)
    policy = str(tmp_path / "gate.toml")
    # a baseline from a file, promoted
    first = caliper(
        "gate",
        "--policy",
        policy,
        "--candidate-file",
        str(tmp_path / "good.npz"),
        "--baseline",
        "tag:prod",
        "--model",
        "m",
        env=cli_env,
    )
    assert first.returncode == 2 and "baseline selector" in first.stderr  # nothing promoted yet: broken pipeline
    created = caliper(
        "gate",
        "--policy",
        policy,
        "--candidate-file",
        str(tmp_path / "good.npz"),
        "--baseline",
        "missing-id",
        env=cli_env,
    )
    assert created.returncode == 2
    from caliper_client import CaliperClient

    server_port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(server_port)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{server_port}"
        _wait(url)
        client = CaliperClient(url)
        baseline_id = client.evaluate(
            logits=good, labels=labels, model="m", losses=["cross_entropy"], metrics=["accuracy", "ece", "nll"]
        )["id"]
        promoted = caliper("promote", baseline_id, "--tag", "prod", env=cli_env)
        assert promoted.returncode == 0, promoted.stderr
        outputs = {}
        for mode, extra in (("local", []), ("http", ["--url", url])):
            junit, markdown, html = tmp_path / f"{mode}.xml", tmp_path / f"{mode}.md", tmp_path / f"{mode}.html"
            result = caliper(
                "gate",
                "--policy",
                policy,
                "--candidate-file",
                str(tmp_path / "worse.npz"),
                "--baseline",
                "tag:prod",
                "--model",
                "m",
                "--junit",
                str(junit),
                "--markdown",
                str(markdown),
                "--html",
                str(html),
                *extra,
                env=cli_env,
            )
            assert result.returncode == 1, result.stdout + result.stderr  # worse model: fail
            page = html.read_text()  # the gate's standalone report: assets inlined, the verdict in it
            assert "window.vegaEmbed" in page and "FAIL" in page.upper() and parsed(page).sources == []
            assert ("/ui/gates/" in markdown.read_text()) == (mode == "http")  # a link where a server is named
            evaluation_html = tmp_path / f"{mode}-evaluation.html"
            again = caliper("report", baseline_id, "--html", str(evaluation_html), *extra, env=cli_env)
            assert again.returncode == 0, again.stderr
            assert baseline_id in evaluation_html.read_text() and "Reliability" in evaluation_html.read_text()
            outputs[mode] = result.stdout
            suite = ET.parse(junit).getroot().find("testsuite")
            assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
            cases = suite.findall("testcase")
            assert [c.find("failure") is not None for c in cases] == [True, False]
            assert "| rule |" in markdown.read_text() and "fail" in markdown.read_text()
        for text in outputs.values():  # each stored its candidate and said which
            stored = text.splitlines()[0].split()[3]
            assert text.startswith("caliper: candidate evaluation ") and client.get_evaluation(stored)["id"] == stored
        strip = lambda text: [line.split("(candidate")[0] for line in text.splitlines()[1:]]  # noqa: E731
        assert strip(outputs["local"]) == strip(outputs["http"])
        passing = tmp_path / "pass.toml"
        passing.write_text(
            '[[rules]]\nmetric = "accuracy"\nop = "min"\nvalue = 0.0\n'
            '[[rules]]\nmetric = "accuracy"\nop = "min_improvement_abs"\nvalue = 0.5\nseverity = "warn"\n'
        )
        args = [
            "gate",
            "--policy",
            str(passing),
            "--candidate-file",
            str(tmp_path / "worse.npz"),
            "--baseline",
            baseline_id,
        ]
        assert caliper(*args, env=cli_env).returncode == 0  # warn passes
        assert caliper(*args, "--strict", env=cli_env).returncode == 1  # unless --strict
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_cli_usage_errors_exit_2(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert caliper("gate", "--policy", "x.toml", env=cli_env).returncode == 2  # no candidate: argparse
    bad = tmp_path / "bad.toml"
    bad.write_text("rulez = 1\n")
    result = caliper("gate", "--policy", str(bad), "--candidate", "a", "--baseline", "b", env=cli_env)
    assert result.returncode == 2 and "unknown keys" in result.stderr
    result = caliper(
        "gate", "--policy", str(bad), "--candidate", "a", "--baseline", "b", "--url", "http://127.0.0.1:9", env=cli_env
    )
    assert result.returncode == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not start")


def test_cli_evaluate_then_gate_against_it_with_tags(cli_env: dict[str, str], tmp_path: Path) -> None:
    """The first baseline's CLI path: `caliper evaluate` stores and prints the id; `promote`; a gate whose
    candidate is tagged; JUnit counts that match the exit code under --strict, with time and timestamp."""
    good, worse, labels = two_models(4)
    np.savez(tmp_path / "good.npz", logits=good, labels=labels)
    np.savez(tmp_path / "worse.npz", logits=worse, labels=labels)
    created = caliper("evaluate", "--npz", str(tmp_path / "good.npz"), "--model", "m", "--tag", "run=1", env=cli_env)
    assert created.returncode == 0, created.stderr
    baseline = created.stdout.strip()
    np.save(tmp_path / "z.npy", good)
    np.save(tmp_path / "y.npy", labels)
    as_json = caliper(
        "evaluate", "--logits", str(tmp_path / "z.npy"), "--labels", str(tmp_path / "y.npy"), "--json", env=cli_env
    )
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["metrics"]["accuracy"] > 0
    assert caliper("promote", baseline, env=cli_env).returncode == 0
    policy = tmp_path / "warn.toml"
    policy.write_text('[[rules]]\nmetric = "accuracy"\nop = "min_improvement_abs"\nvalue = 0.5\nseverity = "warn"\n')
    junit = tmp_path / "gate.xml"
    args = ["gate", "--policy", str(policy), "--candidate-file", str(tmp_path / "worse.npz"), "--baseline", "tag:prod"]
    args += ["--model", "m", "--candidate-tag", "branch=feature-x", "--junit", str(junit)]
    relaxed = caliper(*args, env=cli_env)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert float(suite.get("time", "-1")) > 0 and suite.get("timestamp", "").endswith("Z")
    strict = caliper(*args, "--strict", env=cli_env)
    assert strict.returncode == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"  # what --strict exits 1 for
    candidate = strict.stdout.splitlines()[0].split()[3]
    from app.config import DEFAULT_PROJECT, Settings
    from app.context import Resources
    from app.storage.tenancy import project_scope

    resources = Resources.create(Settings(database_url=cli_env["CALIPER_DATABASE_URL"]))
    try:
        with project_scope(DEFAULT_PROJECT):  # the in-process CLI's project
            assert resources.evaluations.get(candidate).tags["branch"] == "feature-x"
            assert resources.evaluations.get(baseline).tags == {"run": "1", "prod": "true"}
    finally:
        resources.close()


def test_cli_a_rule_that_cannot_be_evaluated_is_a_configuration_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    good, _, labels = two_models(4)
    np.savez(tmp_path / "good.npz", logits=good, labels=labels)
    baseline = caliper("evaluate", "--npz", str(tmp_path / "good.npz"), env=cli_env).stdout.strip()
    policy = tmp_path / "typo.toml"
    policy.write_text(
        '[[rules]]\nmetric = "accuracy"\nop = "min"\nvalue = 0.0\n[[rules]]\nmetric = "eec"\nop = "max"\nvalue = 0.1\n'
    )
    junit = tmp_path / "gate.xml"
    result = caliper(
        "gate", "--policy", str(policy), "--candidate-file", str(tmp_path / "good.npz"), "--baseline", baseline,
        "--junit", str(junit), env=cli_env,
    )  # fmt: skip
    assert result.returncode == 2 and "metric missing: eec" in result.stderr, result.stdout + result.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and (suite.get("errors"), suite.get("failures")) == ("1", "0")
    cases = suite.findall("testcase")
    assert cases[1].find("error") is not None and cases[0].find("error") is None


BROKEN_POLICIES = {
    "op": '[[rules]]\nmetric = "accuracy"\nop = "minimum"\nvalue = 0.0\n',
    "value": '[[rules]]\nmetric = "accuracy"\nop = "min"\nvalue = "high"\n',
    "key": '[[rules]]\nmetric = "accuracy"\nop = "min"\nvalue = 0.0\nthreshold = 1\n',
    "toml": "[[rules]\n",
}


@pytest.mark.parametrize("where", ["in-process", "http"])
def test_cli_a_gate_that_cannot_run_stores_no_candidate(
    where: str, cli_env: dict[str, str], tmp_path: Path, client: TestClient, live_server: str
) -> None:
    """A broken policy or a missing baseline is refused before the candidate's evaluation is stored."""
    env = cli_env | ({"CALIPER_URL": live_server} if where == "http" else {})
    good, _, labels = two_models(4)
    np.savez(tmp_path / "good.npz", logits=good, labels=labels)
    baseline = caliper("evaluate", "--npz", str(tmp_path / "good.npz"), "--tag", "prod", env=env).stdout.strip()
    listed = CaliperClient(live_server) if where == "http" else None

    def stored() -> int:
        if listed is not None:
            return len(listed.list_evaluations(limit=500)["items"])
        with sqlite3.connect(cli_env["CALIPER_DATABASE_URL"].removeprefix("sqlite:///")) as connection:
            return int(connection.execute("select count(*) from evaluations").fetchone()[0])

    assert stored() == 1
    good_policy = tmp_path / "good.toml"
    good_policy.write_text('[[rules]]\nmetric = "accuracy"\nop = "min"\nvalue = 0.0\n')
    cases = [(text, baseline, f"broken {name}") for name, text in BROKEN_POLICIES.items()]
    cases += [(None, "no-such-id", "no evaluation"), (None, "tag:absent", "no evaluation matches")]
    for text, chosen, said in cases:
        policy = good_policy
        if text is not None:
            policy = tmp_path / "broken.toml"
            policy.write_text(text)
        result = caliper(
            "gate", "--policy", str(policy), "--candidate-file", str(tmp_path / "good.npz"), "--baseline", chosen,
            env=env,
        )  # fmt: skip
        assert result.returncode == 2, (said, result.stdout + result.stderr)
        assert ("policy" in result.stderr) if text is not None else ("baseline" in result.stderr), result.stderr
        assert stored() == 1, said
    passed = caliper(
        "gate", "--policy", str(good_policy), "--candidate-file", str(tmp_path / "good.npz"), "--baseline", "tag:prod",
        env=env,
    )  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    assert stored() == 2


def test_the_client_knows_every_rule_op_of_the_service() -> None:
    from caliper_client.cli import RULE_OPS, SEVERITIES

    from app.gating.rules import Op, Severity

    assert get_args(Op) == RULE_OPS and get_args(Severity) == SEVERITIES


def test_cli_files_that_are_not_npz_are_named_without_numpy_internals(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07not arrays at all")
    np.save(tmp_path / "logits.npy", np.eye(3))
    for argv, said in (
        (["--npz", str(tmp_path / "model.onnx")], "is not a .npz file"),
        (["--npz", str(tmp_path / "logits.npy")], "is a .npy file"),
        (["--npz", str(tmp_path / "absent.npz")], "absent.npz"),
    ):
        result = caliper("evaluate", *argv, env=cli_env)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert "pickle" not in result.stderr and "Traceback" not in result.stderr


def test_cli_export_on_an_unmigrated_database_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CALIPER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = caliper("export", "some-model", "-o", str(tmp_path / "out.onnx"), env=env)
    assert result.returncode == 2
    assert "not migrated: run `caliper db upgrade`" in result.stderr and "SELECT" not in result.stderr


def test_cli_an_unmigrated_database_is_a_clear_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CALIPER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.db'}"
    policy = tmp_path / "p.toml"
    policy.write_text('[[rules]]\nmetric = "accuracy"\nop = "min"\nvalue = 0.0\n')
    np.savez(tmp_path / "c.npz", logits=np.eye(3), labels=np.arange(3))
    result = caliper(
        "gate", "--policy", str(policy), "--candidate-file", str(tmp_path / "c.npz"), "--baseline", "x", env=env
    )
    assert result.returncode == 2
    assert "not migrated: run `caliper db upgrade`" in result.stderr and "SQL" not in result.stderr
    upgraded = caliper("db", "upgrade", env=env)
    assert upgraded.returncode == 0 and "is at migration" in upgraded.stdout and "fresh.db" in upgraded.stdout


def test_cli_every_option_has_help_and_exit_codes_are_documented() -> None:
    from app.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pending = [(name, sub) for name, sub in commands.choices.items()]
    while pending:  # every command, and every verb of a command that has them (`caliper model upload`)
        name, sub = pending.pop()
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"caliper {name} {action.option_strings or action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {verb}", parser) for verb, parser in action.choices.items()]
    for name in ("gate", "evaluate", "promote", "model"):
        assert "exit codes" in commands.choices[name].format_help()


def test_confusion_metrics_are_resampled_from_the_stored_labels_and_predictions(client: TestClient) -> None:
    """f1, mcc, balanced accuracy, kappa: each replicate's matrix is W @ one-hot(true·C + predicted), so on
    unit weights the statistic is the metric itself (scikit-learn's), identical models give [0, 0], and
    a worse model's paired interval holds its delta; thresholded and per-class metrics get no interval."""
    from sklearn import metrics as sk

    from app.core.bootstrap import point
    from app.core.metrics import METRICS

    good, worse, labels = two_models(5, n=600)
    pred = worse.argmax(1)
    spec = METRICS["f1"].spec.model_validate({"name": "f1", "average": "weighted"})
    values = RowValues(
        "confusion", cells=labels * 3 + pred, classes=3,
        of_matrix=lambda m: float(METRICS["f1"].finalize({"confusion": m}, spec)),  # type: ignore[arg-type]
    )  # fmt: skip
    assert point(values) == pytest.approx(sk.f1_score(labels, pred, average="weighted"), rel=1e-9)
    names = ["f1", "mcc", "balanced_accuracy", "cohen_kappa"]
    extra = {"metrics": [*names, {"name": "recall", "average": "none"}]}
    base, same, cand = (evaluation(client, z, labels, **extra) for z in (good, good, worse))
    rules = [{"metric": m, "op": "max_decrease_abs", "value": 0.01} for m in names]
    for candidate, identical in ((same, True), (cand, False)):
        body = {"candidate": candidate, "baseline": base, "rules": rules, "significance": 0.9, "resamples": 400}
        gate = client.post("/v1/gates", json=body)
        assert gate.status_code == 201, gate.text
        for result in gate.json()["rules"]:
            low, high = result["interval"]
            if identical:
                assert low == high == 0.0
            else:
                assert low < result["delta"] < high < 0, result  # worse on every one: the interval says so

"""Gate reports for people and CI systems: a console summary, a Markdown table for a pull-request
comment, and JUnit XML with one test case per rule: a rule that could not be evaluated (its metric is
missing from the candidate or the baseline: a typo in the policy, or an evaluation without it) is an
<error>; a failing `fail` rule a <failure>; a failing `warn` rule is reported in <system-out>, so CI shows
it without failing the build, unless `strict`, where it is a <failure> too (the exit code's rule)."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return f"[{value[0]:+.4g}, {value[1]:+.4g}]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def rule_title(rule: dict[str, Any]) -> str:
    return f"{rule['metric']} {rule['op']} {rule['value']:g}"


def summary(gate: dict[str, Any]) -> str:
    lines = [
        f"caliper gate: {gate['verdict'].upper()} (candidate {gate['candidate']}, baseline {gate['baseline']}"
        + (f", {gate['bootstrap']} bootstrap" if gate.get("bootstrap") else "")
        + ")"
    ]
    for rule in gate["rules"]:
        status = "ok  " if rule["passed"] else ("FAIL" if rule["severity"] == "fail" else "WARN")
        lines.append(f"  [{status}] {rule_title(rule)}: {rule['reason']}")
    return "\n".join(lines) + "\n"


def markdown(gate: dict[str, Any], url: str | None = None) -> str:
    """The pull-request comment; with the service's `url`, links to the gate's page in the web report."""
    icon = {"pass": "✅", "warn": "⚠️", "fail": "❌"}[gate["verdict"]]
    rows = [
        f"### {icon} Caliper gate: **{gate['verdict']}**",
        "",
        f"Candidate `{gate['candidate']}` against baseline `{gate['baseline']}`"
        + (f" ({gate['bootstrap']} bootstrap)." if gate.get("bootstrap") else "."),
        "",
        "| rule | severity | candidate | baseline | delta | interval | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in gate["rules"]:
        result = "pass" if rule["passed"] else rule["severity"]
        rows.append(
            f"| `{rule_title(rule)}` | {rule['severity']} | {_fmt(rule['candidate'])} | "
            f"{_fmt(rule['baseline'])} | {_fmt(rule['delta'])} | {_fmt(rule.get('interval'))} | {result} |"
        )
    if url:
        rows += ["", f"[The gate in Caliper's report]({url.rstrip('/')}/ui/gates/{gate['id']})"]
    return "\n".join(rows) + "\n"


def unevaluable(rule: dict[str, Any]) -> bool:
    """The rule's metric is missing from the candidate, or from the baseline a comparison needs."""
    return rule["candidate"] is None or (rule["op"] not in ("min", "max") and rule["baseline"] is None)


def failing(rule: dict[str, Any], strict: bool) -> bool:
    """A <failure>: an evaluated rule that failed with severity `fail` (or `warn` under --strict)."""
    return not rule["passed"] and not unevaluable(rule) and (rule["severity"] == "fail" or strict)


def junit(gate: dict[str, Any], strict: bool = False, seconds: float = 0.0) -> str:
    """`seconds`: how long the gate took; `timestamp` is the verdict's creation time."""
    rules = gate["rules"]
    counts = {
        "tests": str(len(rules)),
        "failures": str(sum(failing(r, strict) for r in rules)),
        "errors": str(sum(unevaluable(r) for r in rules)),
    }
    elapsed = f"{seconds:.3f}"
    root = ET.Element("testsuites", {"name": "caliper", "time": elapsed, **counts})
    attributes = {"name": "caliper-gate", "skipped": "0", "time": elapsed, "timestamp": gate.get("created_at", "")}
    suite = ET.SubElement(root, "testsuite", {**attributes, **counts})
    for rule in rules:
        case = ET.SubElement(
            suite, "testcase", classname=f"caliper.gate.{rule['metric']}", name=rule_title(rule), time="0"
        )
        if unevaluable(rule):
            ET.SubElement(case, "error", message=rule["reason"], type="GateRuleNotEvaluated").text = rule["reason"]
        elif failing(rule, strict):
            ET.SubElement(case, "failure", message=rule["reason"], type="GateRuleFailed").text = rule["reason"]
        elif not rule["passed"]:
            ET.SubElement(case, "system-out").text = f"WARNING: {rule['reason']}"
    return ET.tostring(root, encoding="unicode", xml_declaration=True)

"""Gate reports for people and CI systems: a console summary, a Markdown table for a pull-request
comment, and JUnit XML with one test case per rule (a failing `fail` rule is a <failure>, a failing
`warn` rule is reported in <system-out>, so CI shows it without failing the build)."""

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


def markdown(gate: dict[str, Any]) -> str:
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
    return "\n".join(rows) + "\n"


def junit(gate: dict[str, Any]) -> str:
    failures = sum(1 for r in gate["rules"] if not r["passed"] and r["severity"] == "fail")
    root = ET.Element("testsuites", name="caliper", tests=str(len(gate["rules"])), failures=str(failures))
    suite = ET.SubElement(
        root,
        "testsuite",
        name="caliper-gate",
        tests=str(len(gate["rules"])),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    for rule in gate["rules"]:
        case = ET.SubElement(suite, "testcase", classname=f"caliper.gate.{rule['metric']}", name=rule_title(rule))
        if not rule["passed"] and rule["severity"] == "fail":
            ET.SubElement(case, "failure", message=rule["reason"], type="GateRuleFailed").text = rule["reason"]
        elif not rule["passed"]:
            ET.SubElement(case, "system-out").text = f"WARNING: {rule['reason']}"
    return ET.tostring(root, encoding="unicode", xml_declaration=True)

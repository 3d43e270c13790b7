"""`caliper gate` and `caliper promote`: the CI hook. With --url they talk to a running service;
without it they run the same service code in-process against the configured database, so a CI job
needs no server. Exit codes: 0 pass (and warn unless --strict), 1 fail, 2 usage or service error."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PASS, FAIL, BROKEN = 0, 1, 2


class Backend(Protocol):
    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]: ...
    def gate(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]: ...


class HttpBackend:
    def __init__(self, url: str) -> None:
        from app.client import CaliperClient

        self.client = CaliperClient(url)

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        return self.client.evaluate(logits=logits, labels=labels, **options)

    def gate(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.create_gate(body)

    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]:
        return self.client.set_tags(evaluation_id, tags)


class LocalBackend:
    """The service functions on the configured database (DATABASE_URL), without HTTP."""

    def __init__(self) -> None:
        from app.config import get_settings
        from app.context import Resources

        self.resources = Resources.create(get_settings())

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        from app.evaluation.schemas import EvaluationRequest

        request = EvaluationRequest.model_validate(options)
        out = self.resources.evaluations.create(request, {"logits": logits, "labels": labels})
        return out.model_dump(mode="json")

    def gate(self, body: dict[str, Any]) -> dict[str, Any]:
        from app.gating.schemas import GateRequest

        return self.resources.gates.create(GateRequest.model_validate(body)).model_dump(mode="json")

    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]:
        return self.resources.evaluations.set_tags(evaluation_id, tags).model_dump(mode="json")


def load_policy(path: Path) -> dict[str, Any]:
    """TOML: optional `significance`, `resamples`, `seed`, and [[rules]] tables (metric, op, value, severity)."""
    policy = tomllib.loads(path.read_text())
    unknown = set(policy) - {"significance", "resamples", "seed", "rules"}
    if unknown:
        raise ValueError(f"unknown policy keys: {sorted(unknown)}")
    if not policy.get("rules"):
        raise ValueError("the policy has no [[rules]]")
    return policy


def baseline_of(value: str, model: str | None, dataset: str | None) -> str | dict[str, str]:
    if value.startswith("tag:"):
        selector = {"tag": value[4:], "model": model, "dataset": dataset}
        return {k: v for k, v in selector.items() if v is not None}
    return value


def run_gate(args: argparse.Namespace, backend: Backend) -> int:
    from app.gating import report

    policy = load_policy(Path(args.policy))
    candidate = args.candidate
    if args.candidate_file:
        with np.load(args.candidate_file, allow_pickle=False) as data:
            missing = {"logits", "labels"} - set(data.files)
            if missing:
                raise ValueError(f"{args.candidate_file} lacks {sorted(missing)}")
            logits, labels = data["logits"], data["labels"]
        metric_names = {
            "accuracy",
            "top_k_accuracy",
            "nll",
            "brier",
            "ece",
            "mce",
            "classwise_ece",
            "smooth_ece",
            "entropy",
            "aurc",
            "softmax_collapse",
        }
        wanted = sorted(
            {r["metric"] for r in policy["rules"]} & metric_names | {"accuracy", "nll", "brier", "ece", "mce"}
        )
        options = {"model": args.model, "dataset": args.dataset, "metrics": wanted, "losses": ["cross_entropy"]}
        candidate = backend.evaluate(logits, labels, {k: v for k, v in options.items() if v is not None})["id"]
    body = {
        "candidate": candidate,
        "baseline": baseline_of(args.baseline, args.model, args.dataset),
        "rules": policy["rules"],
    }
    body.update({k: policy[k] for k in ("significance", "resamples", "seed") if k in policy})
    gate = backend.gate(body)
    sys.stdout.write(report.summary(gate))
    for path, render in ((args.markdown, report.markdown), (args.junit, report.junit)):
        if path:
            Path(path).write_text(render(gate))
    if args.json:
        Path(args.json).write_text(json.dumps(gate, indent=2))
    if gate["verdict"] == "fail" or (gate["verdict"] == "warn" and args.strict):
        return FAIL
    return PASS


def add_parsers(sub: Any) -> None:
    gate = sub.add_parser("gate", help="judge a candidate evaluation against a baseline (CI hook)")
    gate.add_argument("--url", help="a running Caliper service; default: in-process on DATABASE_URL")
    gate.add_argument("--policy", required=True, help="TOML policy: rules, significance, resamples, seed")
    which = gate.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidate", help="evaluation id")
    which.add_argument("--candidate-file", help=".npz with logits and labels: evaluated first")
    gate.add_argument("--baseline", required=True, help="evaluation id, or tag:NAME (newest with that tag)")
    gate.add_argument("--model")
    gate.add_argument("--dataset")
    gate.add_argument("--strict", action="store_true", help="warn exits 1 too")
    gate.add_argument("--markdown", help="write a Markdown summary (pull-request comment)")
    gate.add_argument("--junit", help="write JUnit XML (one test case per rule)")
    gate.add_argument("--json", help="write the verdict as JSON")
    gate.set_defaults(func=lambda a: _guarded(lambda b: run_gate(a, b), a))
    promote = sub.add_parser("promote", help="tag an evaluation as the baseline later gates compare against")
    promote.add_argument("evaluation_id")
    promote.add_argument("--tag", default="prod")
    promote.add_argument("--url")
    promote.set_defaults(func=lambda a: _guarded(lambda b: _promote(a, b), a))


def _promote(args: argparse.Namespace, backend: Backend) -> int:
    backend.tag(args.evaluation_id, {args.tag: "true"})
    print(f"caliper: evaluation {args.evaluation_id} tagged {args.tag!r}")
    return PASS


def _guarded(command: Any, args: argparse.Namespace) -> int:
    """Any service, file or configuration error is exit code 2, so CI can tell a broken pipeline from a
    worse model."""
    try:
        backend: Backend = HttpBackend(args.url) if args.url else LocalBackend()
        return int(command(backend))
    except Exception as exc:
        print(f"caliper: error: {exc}", file=sys.stderr)
        return BROKEN

"""`caliper evaluate`, `caliper gate` and `caliper promote`: the CI hook. With --url they talk to a running
service; without it they run the same service code in-process against the configured database, so a CI
job needs no server. Exit codes: 0 pass (and warn unless --strict), 1 fail, 2 usage, configuration or
service error (a rule that cannot be evaluated included: its metric is missing, e.g. a typo)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PASS, FAIL, BROKEN = 0, 1, 2
EXIT_CODES = (
    "exit codes: 0 pass (a warn too, unless --strict); 1 fail (a worse model); 2 usage, configuration or "
    "service error: a bad policy, a rule whose metric is missing, an unmigrated database, an unreachable server"
)
METRICS = {
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
}  # what `caliper gate --candidate-file` computes for the rules that name them
DEFAULT_METRICS = ["accuracy", "nll", "brier", "ece", "mce"]


class ConfigurationError(Exception):
    """The command cannot run as configured (exit code 2, with this message)."""


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
        from app.storage.db import display_url
        from app.storage.migrate import is_at_head

        settings = get_settings()
        self.resources = Resources.create(settings)
        try:
            ready = is_at_head(settings, self.resources.engine)
        except Exception as exc:
            self.resources.close()
            where = display_url(settings.database_url)
            raise ConfigurationError(f"cannot reach the database {where}: {str(exc).splitlines()[0]}") from exc
        if not ready:
            self.resources.close()
            where = display_url(settings.database_url)
            raise ConfigurationError(f"the database {where} is not migrated: run `caliper db upgrade` first")

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


def tags_of(pairs: list[str] | None) -> dict[str, str]:
    """`KEY=VALUE` options as tags (a bare KEY is KEY=true)."""
    tags = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if not key:
            raise ConfigurationError(f"tag {pair!r} has no key (use KEY=VALUE)")
        tags[key] = value if _ else "true"
    return tags


def load_arrays(npz: str | None, logits: str | None, labels: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels from one .npz (arrays `logits`, `labels`) or two .npy files (never unpickled)."""
    if npz:
        with np.load(npz, allow_pickle=False) as data:
            missing = {"logits", "labels"} - set(data.files)
            if missing:
                raise ConfigurationError(f"{npz} lacks {sorted(missing)} (it has {sorted(data.files)})")
            return data["logits"], data["labels"]
    if not (logits and labels):
        raise ConfigurationError("give --npz FILE, or --logits FILE and --labels FILE")
    return np.load(logits, allow_pickle=False), np.load(labels, allow_pickle=False)


def run_evaluate(args: argparse.Namespace, backend: Backend) -> int:
    logits, labels = load_arrays(args.npz, args.logits, args.labels)
    options = {
        "model": args.model,
        "dataset": args.dataset,
        "tags": tags_of(args.tag),
        "metrics": args.metric or None,
    }
    out = backend.evaluate(logits, labels, {k: v for k, v in options.items() if v})
    print(json.dumps(out, indent=2) if args.json else out["id"])
    return PASS


def run_gate(args: argparse.Namespace, backend: Backend) -> int:
    from app.gating import report

    started = time.monotonic()
    policy = load_policy(Path(args.policy))
    candidate = args.candidate
    tags = tags_of(args.candidate_tag)
    if args.candidate_file:
        logits, labels = load_arrays(args.candidate_file, None, None)
        wanted = sorted({r["metric"] for r in policy["rules"]} & METRICS | set(DEFAULT_METRICS))
        options = {
            "model": args.model,
            "dataset": args.dataset,
            "metrics": wanted,
            "losses": ["cross_entropy"],
            "tags": tags,
        }
        candidate = backend.evaluate(logits, labels, {k: v for k, v in options.items() if v})["id"]
        print(f"caliper: candidate evaluation {candidate} stored" + (f" with tags {tags}" if tags else ""))
    elif tags:
        backend.tag(candidate, tags)
    body = {
        "candidate": candidate,
        "baseline": baseline_of(args.baseline, args.model, args.dataset),
        "rules": policy["rules"],
    }
    body.update({k: policy[k] for k in ("significance", "resamples", "seed") if k in policy})
    gate = backend.gate(body)
    sys.stdout.write(report.summary(gate))
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(gate))
    if args.junit:
        Path(args.junit).write_text(report.junit(gate, args.strict, time.monotonic() - started))
    if args.json:
        Path(args.json).write_text(json.dumps(gate, indent=2))
    broken = [r for r in gate["rules"] if report.unevaluable(r)]
    if broken:
        names = ", ".join(sorted({r["metric"] for r in broken}))
        raise ConfigurationError(f"rules that cannot be evaluated (metric missing: {names}): check the policy")
    if any(report.failing(r, args.strict) for r in gate["rules"]):
        return FAIL
    return PASS


URL_HELP = "a running Caliper service, e.g. http://127.0.0.1:8000; default: in-process on DATABASE_URL"


def add_parsers(sub: Any) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate logits and labels and store the evaluation (prints its id)",
        epilog="exit codes: 0 stored; 2 usage, configuration or service error",
    )
    evaluate.add_argument("--npz", help=".npz file with arrays `logits` [N, C] and `labels` [N]")
    evaluate.add_argument("--logits", help=".npy file with the logits [N, C] (with --labels)")
    evaluate.add_argument("--labels", help=".npy file with the integer labels [N] (with --logits)")
    evaluate.add_argument("--model", help="the model's name, stored with the evaluation (baselines select by it)")
    evaluate.add_argument("--dataset", help="the dataset's name, stored with the evaluation")
    evaluate.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag to store (repeatable)")
    evaluate.add_argument("--metric", action="append", metavar="NAME", help="a metric to compute (repeatable)")
    evaluate.add_argument("--json", action="store_true", help="print the whole evaluation as JSON, not its id")
    evaluate.add_argument("--url", help=URL_HELP)
    evaluate.set_defaults(func=lambda a: _guarded(lambda b: run_evaluate(a, b), a))

    gate = sub.add_parser("gate", help="judge a candidate evaluation against a baseline (CI hook)", epilog=EXIT_CODES)
    gate.add_argument("--url", help=URL_HELP)
    gate.add_argument("--policy", required=True, help="TOML policy: [[rules]], significance, resamples, seed")
    which = gate.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidate", help="the candidate's evaluation id")
    which.add_argument("--candidate-file", help=".npz with `logits` and `labels`: evaluated and stored first")
    gate.add_argument("--baseline", required=True, help="evaluation id, or tag:NAME (the newest with that tag)")
    gate.add_argument("--model", help="the model name: stored with a --candidate-file, and narrows tag:NAME")
    gate.add_argument("--dataset", help="the dataset name: stored with a --candidate-file, and narrows tag:NAME")
    gate.add_argument(
        "--candidate-tag", action="append", metavar="KEY=VALUE", help="tag the candidate evaluation (repeatable)"
    )
    gate.add_argument("--strict", action="store_true", help="a failing warn rule fails the gate too (exit 1)")
    gate.add_argument("--markdown", metavar="FILE", help="write a Markdown summary (pull-request comment)")
    gate.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per rule)")
    gate.add_argument("--json", metavar="FILE", help="write the verdict as JSON")
    gate.set_defaults(func=lambda a: _guarded(lambda b: run_gate(a, b), a))

    promote = sub.add_parser(
        "promote",
        help="tag an evaluation as the baseline later gates compare against",
        epilog="exit codes: 0 tagged; 2 usage, configuration or service error",
    )
    promote.add_argument("evaluation_id", help="the evaluation to promote")
    promote.add_argument("--tag", default="prod", help="the tag gates select with tag:NAME (default: prod)")
    promote.add_argument("--url", help=URL_HELP)
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

"""`caliper evaluate`, `gate`, `promote` and `report`: the CI hook. With --url (or CALIPER_URL) they talk to a
running service, with the key in CALIPER_API_KEY; without it, where caliper-service is installed, they run
the same service code in-process against the configured database (its `caliper.backends` entry point), so
a CI job needs no server. caliper-service adds its own commands (serve, db, export, …) through the
`caliper.commands` entry point. Exit codes: 0 pass (and warn unless --strict), 1 fail, 2 usage,
configuration or service error (a rule that cannot be evaluated included: its metric is missing)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from caliper_client import report
from caliper_client.client import CaliperClient, CaliperError

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
RULE_OPS = (  # the service's gate rule ops (app.gating.rules.Op; a test holds the two equal)
    "min",
    "max",
    "max_increase_abs",
    "max_increase_rel",
    "max_decrease_abs",
    "max_decrease_rel",
    "min_improvement_abs",
    "min_improvement_rel",
)
SEVERITIES = ("fail", "warn")


class ConfigurationError(Exception):
    """The command cannot run as configured (exit code 2, with this message)."""


Progress = Callable[[int, int | None], None]  # (rows done, rows in all) of a running evaluation


class Backend(Protocol):
    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]: ...
    def evaluate_sources(
        self, sources: dict[str, str], options: dict[str, Any], dask: str | None, on_progress: Progress
    ) -> dict[str, Any]: ...
    def gate(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]: ...
    def get_gate(self, gate_id: str) -> dict[str, Any]: ...
    def check_baseline(self, baseline: str | dict[str, str]) -> None: ...
    def report_html(self, kind: str, record_id: str) -> str: ...
    def is_evaluation(self, record_id: str) -> bool: ...


class HttpBackend:
    def __init__(self, url: str) -> None:
        self.client = CaliperClient(url)

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        return self.client.evaluate(logits=logits, labels=labels, **options)

    def evaluate_sources(
        self, sources: dict[str, str], options: dict[str, Any], dask: str | None, on_progress: Progress
    ) -> dict[str, Any]:
        """A job on the server, which reads the files (its CALIPER_DATA_ROOTS / CALIPER_DATA_URLS) on its
        own Dask cluster if it has one; polled to its result."""
        if dask:
            raise ConfigurationError("--dask runs in-process: the server uses its own CALIPER_DASK_SCHEDULER")
        job = self.client.evaluate(source=sources, respond_async=True, **options)
        return self.client.wait_job(
            job["id"], on_progress=lambda j: on_progress(j["progress"]["done"], j["progress"]["total"])
        )

    def gate(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.create_gate(body)

    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]:
        return self.client.set_tags(evaluation_id, tags)

    def get_gate(self, gate_id: str) -> dict[str, Any]:
        return self.client.get_gate(gate_id)

    def report_html(self, kind: str, record_id: str) -> str:
        if kind == "gates":
            return self.client.gate_report_html(record_id)
        return self.client.evaluation_report_html(record_id)

    def is_evaluation(self, record_id: str) -> bool:
        try:
            self.client.get_evaluation(record_id)
        except CaliperError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def check_baseline(self, baseline: str | dict[str, str]) -> None:
        """ConfigurationError unless the baseline names a stored evaluation (as the gate will look it up)."""
        if isinstance(baseline, str):
            try:
                self.client.get_evaluation(baseline)
            except CaliperError as exc:
                raise ConfigurationError(f"baseline: {exc}") from exc
        elif not self.client.list_evaluations(**baseline, limit=1)["items"]:
            raise ConfigurationError(f"baseline: no evaluation matches the selector {baseline}")


def load_policy(path: Path) -> dict[str, Any]:
    """TOML: optional `significance`, `resamples`, `seed`, and [[rules]] tables (metric, op, value, severity),
    checked here, so that a broken policy is refused before anything is evaluated or stored."""
    try:
        policy = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"policy {path}: {exc}") from exc
    unknown = set(policy) - {"significance", "resamples", "seed", "rules"}
    if unknown:
        raise ConfigurationError(f"policy {path}: unknown keys {sorted(unknown)}")
    if not policy.get("rules") or not isinstance(policy["rules"], list):
        raise ConfigurationError(f"policy {path} has no [[rules]]")
    for number, rule in enumerate(policy["rules"], 1):
        fault = _rule_fault(rule)
        if fault:
            raise ConfigurationError(f"policy {path}, rule {number}: {fault}")
    return policy


def _rule_fault(rule: Any) -> str | None:
    """What is wrong with one [[rules]] table, or None."""
    if not isinstance(rule, dict):
        return "must be a table"
    unknown = set(rule) - {"metric", "op", "value", "severity", "slice"}
    if unknown:
        return f"unknown keys {sorted(unknown)}"
    group = rule.get("slice", {"key": "value"})
    if not (isinstance(group, dict) and len(group) == 1 and all(isinstance(v, str) for v in group.values())):
        return "slice must be one KEY = VALUE pair (an inline table of one string)"
    if not isinstance(rule.get("metric"), str) or not rule["metric"]:
        return "needs a metric name"
    if rule.get("op") not in RULE_OPS:
        return f"op {rule.get('op')!r} is not one of {list(RULE_OPS)}"
    value = rule.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"value {value!r} must be a finite number"
    if rule.get("severity", "fail") not in SEVERITIES:
        return f"severity {rule['severity']!r} is not one of {list(SEVERITIES)}"
    return None


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
        data = load_numpy(npz, ".npz")
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ConfigurationError(f"{npz} is a .npy file: give it with --logits/--labels, or save a .npz")
        with data:
            missing = {"logits", "labels"} - set(data.files)
            if missing:
                raise ConfigurationError(f"{npz} lacks {sorted(missing)} (it has {sorted(data.files)})")
            return data["logits"], data["labels"]
    if not (logits and labels):
        raise ConfigurationError("give --npz FILE, or --logits FILE and --labels FILE")
    arrays = [load_numpy(path, ".npy") for path in (logits, labels)]
    for path, array in zip((logits, labels), arrays, strict=True):
        if not isinstance(array, np.ndarray):
            raise ConfigurationError(f"{path} is a .npz archive: give it with --npz")
    return arrays[0], arrays[1]


def load_numpy(path: str, kind: str) -> Any:
    """np.load without pickles; a file numpy cannot read as .npy/.npz is a ConfigurationError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's word for "not .npy or .npz" is its refusal to unpickle
        raise ConfigurationError(f"{path} is not a {kind} file of numeric arrays (numpy could not read it)") from exc
    except OSError as exc:
        raise ConfigurationError(f"{path}: {exc.strerror or exc}") from exc


def slices_of(pairs: list[str] | None) -> dict[str, np.ndarray]:
    """`KEY=FILE.npy` options as slice columns (one group value per row, integers or strings)."""
    slices = {}
    for pair in pairs or []:
        key, _, path = pair.partition("=")
        if not key or not path:
            raise ConfigurationError(f"slice {pair!r} needs KEY=FILE.npy")
        column = load_numpy(path, ".npy")
        if not isinstance(column, np.ndarray):
            raise ConfigurationError(f"slice {key}: {path} is a .npz archive; save the column as .npy")
        slices[key] = column
    return slices


def sources_of(pairs: list[str] | None) -> dict[str, str]:
    """`FIELD=PATH` options (a path, glob or URL per tensor field)."""
    sources = {}
    for pair in pairs or []:
        field, _, where = pair.partition("=")
        if not field or not where:
            raise ConfigurationError(f"source {pair!r} needs FIELD=PATH (e.g. logits='shards/*.npy')")
        sources[field] = where
    return sources


def progress_bar() -> tuple[Progress, Callable[[], None]]:
    """A rich progress bar of rows on stderr: (update, close)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("evaluating", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    task = bar.add_task("rows", total=None)
    bar.start()
    return lambda done, total: bar.update(task, completed=done, total=total), bar.stop


def run_evaluate(args: argparse.Namespace, backend: Backend) -> int:
    options = {
        "model": args.model,
        "dataset": args.dataset,
        "tags": tags_of(args.tag),
        "metrics": args.metric or None,
        "slices": slices_of(args.slice) or None,
    }
    options = {k: v for k, v in options.items() if v}
    sources = sources_of(args.source)
    if sources:
        if args.npz or args.logits or args.labels:
            raise ConfigurationError("give --source FIELD=PATH, or --npz / --logits and --labels, not both")
        update, close = progress_bar()
        try:
            out = backend.evaluate_sources(sources, options, args.dask, update)
        finally:
            close()
        print(json.dumps(out, indent=2) if args.json else out["id"])
        return PASS
    if args.dask:
        raise ConfigurationError("--dask evaluates --source files")
    logits, labels = load_arrays(args.npz, args.logits, args.labels)
    out = backend.evaluate(logits, labels, options)
    print(json.dumps(out, indent=2) if args.json else out["id"])
    return PASS


def run_gate(args: argparse.Namespace, backend: Backend) -> int:
    started = time.monotonic()
    policy = load_policy(Path(args.policy))
    candidate = args.candidate
    tags = tags_of(args.candidate_tag)
    baseline = baseline_of(args.baseline, args.model, args.dataset)
    if args.candidate_file:
        logits, labels = load_arrays(args.candidate_file, None, None)
        backend.check_baseline(baseline)  # before the candidate is stored: a gate that cannot run stores nothing
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
        "baseline": baseline,
        "rules": policy["rules"],
    }
    body.update({k: policy[k] for k in ("significance", "resamples", "seed") if k in policy})
    return _verdict(backend.gate(body), args, time.monotonic() - started, backend)


def run_report(args: argparse.Namespace, backend: Backend) -> int:
    """A stored gate's reports again, with the exit code its verdict had; with --html and an evaluation's id,
    that evaluation's standalone report."""
    if args.html and backend.is_evaluation(args.gate_id):
        Path(args.html).write_text(backend.report_html("evaluations", args.gate_id), encoding="utf-8")
        print(f"caliper: report of evaluation {args.gate_id} written to {args.html}")
        return PASS
    return _verdict(backend.get_gate(args.gate_id), args, 0.0, backend)


def _verdict(gate: dict[str, Any], args: argparse.Namespace, seconds: float, backend: Backend) -> int:
    """Print and write the gate's reports; the exit code says pass, fail or broken (a rule not evaluated)."""
    sys.stdout.write(report.summary(gate))
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(gate, args.url or os.environ.get("CALIPER_URL")))
    if args.junit:
        Path(args.junit).write_text(report.junit(gate, args.strict, seconds))
    if args.json:
        Path(args.json).write_text(json.dumps(gate, indent=2))
    if args.html:
        Path(args.html).write_text(backend.report_html("gates", gate["id"]), encoding="utf-8")
    broken = [r for r in gate["rules"] if report.unevaluable(r)]
    if broken:
        names = ", ".join(sorted({r["metric"] for r in broken}))
        raise ConfigurationError(f"rules that cannot be evaluated (metric missing: {names}): check the policy")
    if any(report.failing(r, args.strict) for r in gate["rules"]):
        return FAIL
    return PASS


URL_HELP = (
    "a running Caliper service, e.g. http://127.0.0.1:8000 (default: CALIPER_URL; without either, in-process "
    "on DATABASE_URL where caliper-service is installed); the API key comes from CALIPER_API_KEY"
)


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
    evaluate.add_argument(
        "--slice",
        action="append",
        metavar="KEY=FILE.npy",
        help="also every metric per group of rows: one value per row (integers or strings) (repeatable)",
    )
    evaluate.add_argument(
        "--source",
        action="append",
        metavar="FIELD=PATH",
        help="read a tensor field (logits, probabilities, labels, targets, sample_weight) from a .npy or Parquet "
        "file, a glob of shards or a URL, chunk by chunk, with a progress bar (repeatable)",
    )
    evaluate.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="in-process only: evaluate the --source files on a Dask cluster: tcp://host:8786, or local:N worker "
        "processes",
    )
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
    _report_options(gate)
    gate.set_defaults(func=lambda a: _guarded(lambda b: run_gate(a, b), a))

    again = sub.add_parser("report", help="the reports of a stored gate verdict, again", epilog=EXIT_CODES)
    again.add_argument(
        "gate_id", metavar="ID", help="a gate verdict's id (printed by `caliper gate`), or with --html an evaluation's"
    )
    again.add_argument("--url", help=URL_HELP)
    _report_options(again)
    again.set_defaults(func=lambda a: _guarded(lambda b: run_report(a, b), a))

    promote = sub.add_parser(
        "promote",
        help="tag an evaluation as the baseline later gates compare against",
        epilog="exit codes: 0 tagged; 2 usage, configuration or service error",
    )
    promote.add_argument("evaluation_id", help="the evaluation to promote")
    promote.add_argument("--tag", default="prod", help="the tag gates select with tag:NAME (default: prod)")
    promote.add_argument("--url", help=URL_HELP)
    promote.set_defaults(func=lambda a: _guarded(lambda b: _promote(a, b), a))


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="a failing warn rule fails the gate too (exit 1)")
    parser.add_argument("--markdown", metavar="FILE", help="write a Markdown summary (pull-request comment)")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per rule)")
    parser.add_argument("--json", metavar="FILE", help="write the verdict as JSON")
    parser.add_argument("--html", metavar="FILE", help="write the standalone HTML report (opens offline)")


def _promote(args: argparse.Namespace, backend: Backend) -> int:
    backend.tag(args.evaluation_id, {args.tag: "true"})
    print(f"caliper: evaluation {args.evaluation_id} tagged {args.tag!r}")
    return PASS


def _guarded(command: Any, args: argparse.Namespace) -> int:
    """Any service, file or configuration error is exit code 2, so CI can tell a broken pipeline from a
    worse model."""
    try:
        return int(command(_backend(args.url or os.environ.get("CALIPER_URL"))))
    except Exception as exc:
        print(f"caliper: error: {exc}", file=sys.stderr)
        return BROKEN


def _backend(url: str | None) -> Backend:
    """HTTP to `url`; else the in-process backend that caliper-service registers."""
    if url:
        return HttpBackend(url)
    local = entry_points(group="caliper.backends", name="local")
    if not local:
        raise ConfigurationError("give --url (or CALIPER_URL): running in-process needs caliper-service installed")
    backend: Backend = next(iter(local)).load()()
    return backend


def build_parser() -> argparse.ArgumentParser:
    """The client's verbs, and every command an installed plugin adds (`caliper.commands` entry points)."""
    parser = argparse.ArgumentParser(prog="caliper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    for plugin in sorted(entry_points(group="caliper.commands"), key=lambda e: e.name):
        plugin.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

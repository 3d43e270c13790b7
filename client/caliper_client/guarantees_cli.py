"""`caliper conformal fit|predict|show|list|delete` and `caliper estimate`: conformal prediction sets and
label-free accuracy estimates on a running service (--url or CALIPER_URL, the key in CALIPER_API_KEY).
Arrays go in as .npy files (read without pickles) and sets come out as .npz. Exit codes: 0 done, 2 usage,
file or service error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from caliper_client.cli import load_numpy, tags_of
from caliper_client.client import CaliperClient
from caliper_client.model_cli import DONE, EXIT_CODES, URL_HELP, connected, printed, verbs_of

SCORES = ("lac", "aps", "raps", "top_k")


def _scores(args: argparse.Namespace, prefix: str = "") -> dict[str, np.ndarray]:
    """`logits` or `probabilities` from the .npy file given for either (exactly one)."""
    given = {kind: getattr(args, f"{prefix}{kind}") for kind in ("logits", "probabilities")}
    chosen = {kind: path for kind, path in given.items() if path is not None}
    if len(chosen) != 1:
        raise ValueError(
            f"give one of --{prefix.replace('_', '-')}logits and --{prefix.replace('_', '-')}probabilities"
        )
    return {kind: load_numpy(str(path), ".npy") for kind, path in chosen.items()}


def _labels(args: argparse.Namespace) -> dict[str, str | dict[str, str] | None]:
    labels = {"model": args.model, "dataset": args.dataset, "tags": tags_of(args.tag) or None}
    return {k: v for k, v in labels.items() if v is not None}


def _fit(args: argparse.Namespace, client: CaliperClient) -> int:
    params = {"alpha": args.alpha, "mondrian": args.mondrian, "lambda": args.lam, "k_reg": args.k_reg}
    options: dict[str, Any] = {"params": params, **_labels(args)}
    if args.calibrator:
        options["calibrator_id"] = args.calibrator
    labels = load_numpy(str(args.labels), ".npy")
    return printed(client.fit_conformal(args.method, labels=labels, **_scores(args), **options), args.json)


def _predict(args: argparse.Namespace, client: CaliperClient) -> int:
    scores = _scores(args)
    sets = client.predict_conformal(args.conformal_id, **scores)
    np.savez(args.output, **sets)  # type: ignore[arg-type]
    print(f"wrote {args.output}: {len(sets['set_size'])} rows, mean set size {float(np.mean(sets['set_size'])):.4g}")
    if args.labels is not None:
        labels = load_numpy(str(args.labels), ".npy")
        report = client.conformal_coverage(args.conformal_id, labels=labels, **scores)
        print(json.dumps({k: report[k] for k in ("coverage", "mean_set_size", "class_coverage")}))
    return DONE


def _show(args: argparse.Namespace, client: CaliperClient) -> int:
    return printed(client.get_conformal(args.conformal_id), as_json=True)


def _list(args: argparse.Namespace, client: CaliperClient) -> int:
    page = client.list_conformal(model=args.model, method=args.method, limit=args.limit)
    for record in page["items"]:
        print(f"{record['id']}  {record['method']}  alpha={record['params']['alpha']}  {record['created_at']}")
    return DONE


def _delete(args: argparse.Namespace, client: CaliperClient) -> int:
    client.delete_conformal(args.conformal_id)
    print(f"caliper: conformal predictor {args.conformal_id} deleted")
    return DONE


def _estimate(args: argparse.Namespace, client: CaliperClient) -> int:
    options: dict[str, Any] = _labels(args)
    if args.method:
        options["methods"] = args.method
    if args.calibrator:
        options["calibrator_id"] = args.calibrator
    if (args.reference_logits is None) != (args.reference_labels is None):
        raise ValueError("give --reference-logits and --reference-labels together")
    if args.reference_logits is not None:
        reference = (load_numpy(str(args.reference_logits), ".npy"), load_numpy(str(args.reference_labels), ".npy"))
        options["reference"] = reference
    scores = _scores(args)
    record = client.estimate(logits=scores.get("logits"), probabilities=scores.get("probabilities"), **options)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(record["id"], " ".join(f"{k}={v:.4f}" for k, v in record["estimates"].items() if v is not None))
    return DONE


def _stored(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="the model's name, stored with the record")
    parser.add_argument("--dataset", help="the dataset's name, stored with the record")
    parser.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag to store (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the whole record as JSON")


def _inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--logits", type=Path, help=".npy with the logits [N, C]")
    parser.add_argument("--probabilities", type=Path, help=".npy with the probabilities [N, C] (instead)")


def add_parsers(sub: Any) -> None:
    verb = verbs_of(sub, "conformal", "fit, apply, show, list and delete conformal prediction sets", __doc__)
    fit = verb("fit", _fit, "fit a split conformal predictor on calibration rows (prints its id)")
    fit.add_argument("--method", choices=SCORES, required=True, help="the nonconformity score")
    _inputs(fit)
    fit.add_argument("--labels", required=True, type=Path, help=".npy with the integer labels [N]")
    fit.add_argument("--alpha", type=float, default=0.1, help="miscoverage: sets cover ≥ 1 − alpha (default 0.1)")
    fit.add_argument("--mondrian", action="store_true", help="class-conditional coverage (one quantile per class)")
    fit.add_argument("--lambda", dest="lam", type=float, default=0.01, help="raps: penalty per rank (0.01)")
    fit.add_argument("--k-reg", type=int, default=1, help="raps: ranks not penalised (1)")
    fit.add_argument("--calibrator", metavar="ID", help="rank this calibrator's probabilities of the logits")
    _stored(fit)

    predict = verb("predict", _predict, "prediction sets of rows, written as .npz (prediction_set, set_size)")
    predict.add_argument("conformal_id", help="the predictor's id")
    _inputs(predict)
    predict.add_argument("-o", "--output", required=True, type=Path, help="the .npz to write the sets to")
    predict.add_argument("--labels", type=Path, help=".npy with labels: also print the coverage")

    show = verb("show", _show, "print one predictor's record as JSON")
    show.add_argument("conformal_id", help="the predictor's id")

    listing = verb("list", _list, "list conformal predictors, newest first")
    listing.add_argument("--model", help="only predictors of this model")
    listing.add_argument("--method", choices=SCORES, help="only predictors with this score")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    delete = verb("delete", _delete, "delete a conformal predictor")
    delete.add_argument("conformal_id", help="the predictor's id")

    help = "estimate the accuracy of unlabelled rows (cbpe, atc, doc) and store it"
    estimate = sub.add_parser("estimate", help=help, description=__doc__, epilog=EXIT_CODES)
    estimate.add_argument("--url", help=URL_HELP)
    _inputs(estimate)
    estimate.add_argument("--reference-logits", type=Path, help=".npy with a labelled reference's logits (atc, doc)")
    estimate.add_argument("--reference-labels", type=Path, help=".npy with the reference's labels")
    estimate.add_argument("--method", action="append", choices=("cbpe", "atc", "doc"), help="an estimate (repeatable)")
    estimate.add_argument("--calibrator", metavar="ID", help="the confidences of this calibrator's probabilities")
    _stored(estimate)
    estimate.set_defaults(func=connected(_estimate, "estimate"))

"""`caliper model upload|list|show|delete|predict|evaluate`: uploaded ONNX models on a running service
(--url or CALIPER_URL, the key in CALIPER_API_KEY). An uploaded model is untrusted code that runs in the
service's sandboxed workers, so these commands have no in-process mode. Arrays go in and come out as .npz
files keyed by name (read without pickles). Exit codes: 0 done, 2 usage, file or service error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from caliper_client.cli import load_numpy, tags_of
from caliper_client.client import CaliperClient

DONE, BROKEN = 0, 2
URL_HELP = "the running Caliper service, e.g. http://127.0.0.1:8000 (default: CALIPER_URL)"
EXIT_CODES = "exit codes: 0 done; 2 usage, file or service error"
Verb = Callable[[argparse.Namespace, CaliperClient], int]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name (a .npy file, whose one array has no name, is refused)."""
    data = load_numpy(str(path), ".npz")
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a .npy file: save the inputs as a .npz keyed by input name")
    with data:
        return {name: data[name] for name in data.files}


def printed(record: dict[str, Any], as_json: bool) -> int:
    print(json.dumps(record, indent=2) if as_json else record["id"])
    return DONE


def _upload(args: argparse.Namespace, client: CaliperClient) -> int:
    options: dict[str, Any] = {
        "logits_output": args.logits_output,
        "embedding_output": args.embedding_output,
        "feature_outputs": args.feature_output,
        "tags": tags_of(args.tag) or None,
    }
    record = client.upload_model(args.file, args.name, **{k: v for k, v in options.items() if v is not None})
    return printed(record, args.json)


def _list(args: argparse.Namespace, client: CaliperClient) -> int:
    page = client.list_models(name=args.name, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return DONE
    for record in page["items"]:
        print(f"{record['id']}  {record['name']}  {record['created_at']}  C={record['classes']}")
    return DONE


def _show(args: argparse.Namespace, client: CaliperClient) -> int:
    return printed(client.get_model(args.model_id), as_json=True)


def _delete(args: argparse.Namespace, client: CaliperClient) -> int:
    client.delete_model(args.model_id)
    print(f"caliper: model {args.model_id} deleted")
    return DONE


def _heads(args: argparse.Namespace) -> dict[str, str]:
    heads = {"calibrator_id": args.calibrator, "detector_id": getattr(args, "detector", None), "sdm_id": args.sdm,
             "conformal_id": args.conformal}  # fmt: skip
    return {k: v for k, v in heads.items() if v is not None}


def _predict(args: argparse.Namespace, client: CaliperClient) -> int:
    options: dict[str, Any] = _heads(args) | ({"return_embedding": True} if args.return_embedding else {})
    columns = client.predict(args.model_id, _arrays(args.inputs), **options)
    np.savez(args.output, **columns)  # type: ignore[arg-type]
    rows = len(next(iter(columns.values()))) if columns else 0
    print(f"wrote {args.output}: {rows} rows, columns {', '.join(columns)}")
    return DONE


def _evaluate(args: argparse.Namespace, client: CaliperClient) -> int:
    options: dict[str, Any] = _heads(args)
    options |= {"metrics": args.metric} if args.metric else {}
    options |= {k: v for k, v in {"dataset": args.dataset, "tags": tags_of(args.tag) or None}.items() if v is not None}
    labels = load_numpy(args.labels, ".npy")
    evaluation = client.evaluate_model(args.model_id, _arrays(args.inputs), labels=labels, **options)
    return printed(evaluation, args.json)


def connected(verb: Verb, command: str = "model") -> Callable[[argparse.Namespace], int]:
    """Run `verb` against the service; any service, file or usage error is exit code 2 with its message."""

    def run(args: argparse.Namespace) -> int:
        url = args.url or os.environ.get("CALIPER_URL")
        if not url:
            print(f"caliper {command}: give --url (or CALIPER_URL): this runs on a service", file=sys.stderr)
            return BROKEN
        try:
            with CaliperClient(url) as client:
                return verb(args, client)
        except Exception as exc:
            print(f"caliper {command}: error: {exc}", file=sys.stderr)
            return BROKEN

    return run


def verbs_of(sub: Any, command: str, help: str, description: str | None) -> Callable[[str, Verb, str], Any]:
    """The `caliper <command> <verb>` parser, and a function that adds a verb (with --url) running `verb`."""
    parser = sub.add_parser(command, help=help, description=description, epilog=EXIT_CODES)
    verbs = parser.add_subparsers(dest="verb", required=True, help="what to do")

    def verb(name: str, run: Verb, help: str) -> argparse.ArgumentParser:
        added: argparse.ArgumentParser = verbs.add_parser(name, help=help, epilog=EXIT_CODES)
        added.add_argument("--url", help=URL_HELP)
        added.set_defaults(func=connected(run, command))
        return added

    return verb


def add_parsers(sub: Any) -> None:
    help = "upload, list, show, delete, predict with and evaluate uploaded ONNX models"
    verb = verbs_of(sub, "model", help, __doc__)

    upload = verb("upload", _upload, "upload an .onnx classifier (prints its id)")
    upload.add_argument("file", type=Path, help="the .onnx file")
    upload.add_argument("--name", required=True, help="the model's name (lists and evaluations select by it)")
    upload.add_argument("--logits-output", help="the output with the logits [N, C] (default: the only one)")
    upload.add_argument("--embedding-output", help="the output with the embedding [N, D] (detectors, SDM)")
    upload.add_argument("--feature-output", action="append", metavar="NAME", help="a feature layer (repeatable)")
    upload.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag to store (repeatable)")
    upload.add_argument("--json", action="store_true", help="print the whole record as JSON, not its id")

    listing = verb("list", _list, "list uploaded models, newest first: id, name, time, classes")
    listing.add_argument("--name", help="only models of this name")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")

    show = verb("show", _show, "print one model's record as JSON")
    show.add_argument("model_id", help="the uploaded model's id")

    delete = verb("delete", _delete, "delete a model (refused while a pipeline deploys it)")
    delete.add_argument("model_id", help="the uploaded model's id")

    predict = verb("predict", _predict, "run a model (with heads) on inputs; write its columns as .npz")
    predict.add_argument("model_id", help="the uploaded model's id")
    predict.add_argument("--inputs", required=True, type=Path, help=".npz with one array per model input, by name")
    predict.add_argument("-o", "--output", required=True, type=Path, help="the .npz to write the columns to")
    predict.add_argument("--calibrator", metavar="ID", help="calibrator id: calibrated `probabilities`")
    predict.add_argument("--detector", metavar="ID", help="detector id: `ood_score`")
    predict.add_argument("--sdm", metavar="ID", help="SDM estimator id: the `sdm.*` columns")
    predict.add_argument("--conformal", metavar="ID", help="conformal predictor id: `prediction_set`")
    predict.add_argument("--return-embedding", action="store_true", help="include the embedding output")

    evaluate = verb("evaluate", _evaluate, "evaluate a model on inputs and labels and store it (prints its id)")
    evaluate.add_argument("model_id", help="the uploaded model's id")
    evaluate.add_argument("--inputs", required=True, type=Path, help=".npz with one array per model input, by name")
    evaluate.add_argument("--labels", required=True, type=Path, help=".npy with the integer labels [N]")
    evaluate.add_argument("--calibrator", metavar="ID", help="evaluate the calibrated probabilities")
    evaluate.add_argument("--sdm", metavar="ID", help="add the SDM region metrics")
    evaluate.add_argument("--conformal", metavar="ID", help="add conformal_coverage and conformal_mean_set_size")
    evaluate.add_argument("--metric", action="append", metavar="NAME", help="a metric to compute (repeatable)")
    evaluate.add_argument("--dataset", help="the dataset's name, stored with the evaluation")
    evaluate.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag to store (repeatable)")
    evaluate.add_argument("--json", action="store_true", help="print the whole evaluation as JSON, not its id")

"""`caliper export`: a model with its heads as one ONNX file, from a running service (--url) or in-process
against the configured database and artifact store. Exit codes: 0 written, 2 usage or service error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

OK, BROKEN = 0, 2


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = sub.add_parser(
        "export",
        help="write a model with its calibrator, detector and SDM heads merged into one ONNX file",
        description=__doc__,
    )
    export.add_argument("model_id", help="the uploaded model's id")
    export.add_argument("--calibrator", metavar="ID", help="calibrator id: `probabilities` are calibrated")
    export.add_argument("--detector", metavar="ID", help="detector id: adds `ood_score`")
    export.add_argument("--sdm", metavar="ID", help="SDM estimator id: adds the sdm_* and high_reliability outputs")
    export.add_argument("--dtype", choices=["float32", "float64"], help="precision of the heads (default: the logits')")
    export.add_argument("-o", "--output", required=True, type=Path, help="where to write the .onnx file")
    export.add_argument("--url", help="a running Caliper service (default: in-process, on DATABASE_URL)")
    export.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    heads = {"calibrator_id": args.calibrator, "detector_id": args.detector, "sdm_id": args.sdm}
    try:
        fetch = _remote if args.url else _local
        data = fetch(args.url, args.model_id, heads, args.dtype)
    except Exception as exc:  # every failure is reported, never a traceback: the message names it
        print(f"caliper export: {exc}", file=sys.stderr)
        return BROKEN
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return OK


def _remote(url: str | None, model_id: str, heads: dict[str, str | None], dtype: str | None) -> bytes:
    from caliper_client import CaliperClient

    assert url is not None
    with CaliperClient(url) as client:
        return client.export_model(model_id, **heads, dtype=dtype)


def _local(_: str | None, model_id: str, heads: dict[str, str | None], dtype: str | None) -> bytes:
    import numpy as np

    from app.context import local_resources
    from app.pipelines.heads import Heads

    resources = local_resources()
    try:
        return resources.exports.export(model_id, Heads(**heads), np.dtype(dtype) if dtype else None).data
    finally:
        resources.close()

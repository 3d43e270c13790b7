"""`caliper` command line: serve the API, manage the database."""

from __future__ import annotations

import argparse
import sys

from app.config import get_settings
from app.core.errors import ProviderUnavailableError
from app.gating.cli import add_parsers as add_gate_parsers
from app.pipelines.cli import add_parsers as add_export_parsers


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api.main import create_app

    settings = get_settings()
    try:
        app = create_app(settings)
    except ProviderUnavailableError as exc:
        print(f"caliper: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, access_log=settings.access_log)
    return 0


def _db(args: argparse.Namespace) -> int:
    from app.storage.migrate import downgrade, upgrade

    settings = get_settings()
    if args.action == "upgrade":
        upgrade(settings, args.revision or "head")
    else:
        downgrade(settings, args.revision or "base")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caliper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_serve)
    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", default=None)
    db.set_defaults(func=_db)
    add_gate_parsers(sub)
    add_export_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

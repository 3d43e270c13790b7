"""`caliper` command line: serve the API, manage the database, evaluate, gate, promote, export."""

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
    _json_logs()
    try:
        app = create_app(settings)
    except ProviderUnavailableError as exc:
        print(f"caliper: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, access_log=settings.access_log)
    return 0


def _json_logs() -> None:
    """The service's own log records as JSON lines on stderr, each with its request id."""
    import logging

    from app.api.observability import JsonLines

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("caliper")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _db(args: argparse.Namespace) -> int:
    """Migrate, then say where the database now is (its URL without the password)."""
    from app.storage.db import display_url, make_engine
    from app.storage.migrate import current_revision, downgrade, upgrade

    settings = get_settings()
    where = display_url(settings.database_url)
    try:
        if args.action == "upgrade":
            upgrade(settings, args.revision or "head")
        else:
            downgrade(settings, args.revision or "base")
        engine = make_engine(settings.database_url)
        try:
            revision = current_revision(settings, engine)
        finally:
            engine.dispose()
    except Exception as exc:  # alembic and the driver: a message, not a traceback
        print(f"caliper: could not {args.action} {where}: {exc}", file=sys.stderr)
        return 2
    print(f"caliper: database {where} is at migration {revision or 'base (empty)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caliper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default=None, help="address to bind (default: CALIPER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default: CALIPER_PORT, 8000)")
    serve.set_defaults(func=_serve)
    db = sub.add_parser("db", help="database migrations (DATABASE_URL)")
    db.add_argument("action", choices=["upgrade", "downgrade"], help="upgrade (to head) or downgrade (to base)")
    db.add_argument("revision", nargs="?", default=None, help="a migration id instead of head / base")
    db.set_defaults(func=_db)
    add_gate_parsers(sub)
    add_export_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

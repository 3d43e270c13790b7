"""The service's `caliper` commands: serve the API, manage the database, export a model. They plug into the
`caliper` command of caliper-client (its verbs evaluate, gate, promote and report run in-process here
through `app.local_backend.LocalBackend`) as the `caliper.commands` entry point."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from caliper_client import cli as client_cli

from app.config import PROJECT_NAME_PATTERN, Settings, get_settings, is_loopback
from app.core.errors import ProviderUnavailableError
from app.export_command import add_parsers as add_export_parsers
from app.storage.keys import ROLES


def _serve(args: argparse.Namespace) -> int:
    from app.api.main import create_app
    from app.api.server import json_logs, serve
    from app.core.runtime import resolve_providers

    settings = get_settings()
    overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    json_logs()
    try:
        resolve_providers(settings.provider)
    except ProviderUnavailableError as exc:
        print(f"caliper: {exc}", file=sys.stderr)
        return 2
    unmigrated = _migration_fault(settings)
    if unmigrated is not None:
        print(f"caliper: {unmigrated}", file=sys.stderr)
        return 2
    app = create_app(settings) if settings.workers == 1 else None  # each process builds its own
    if not settings.auth_required() and not is_loopback(settings.host):
        print(f"caliper: warning: auth is disabled on {settings.host} (CALIPER_AUTH=disabled)", file=sys.stderr)
    serve(settings, app)
    return 0


def _migration_fault(settings: Settings) -> str | None:
    """Why the service cannot use the database as it is (it answers but is not at this build's migration
    head), or None; a database that does not answer yet is left to /readyz."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.storage.db import display_url, make_engine
    from app.storage.migrate import schema_revisions

    engine = make_engine(settings.database_url)
    try:
        current, heads = schema_revisions(settings, engine)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    if current == heads:
        return None
    where = display_url(settings.database_url)
    at = ", ".join(sorted(current)) or "none"
    need = ", ".join(sorted(heads))
    return f"the database {where} is not migrated (at {at}; this build needs {need}): run `caliper db upgrade` first"


def _db(args: argparse.Namespace) -> int:
    """Migrate, then say where the database now is (its URL without the password)."""
    from app.storage.db import display_url, make_engine
    from app.storage.migrate import current_revision, downgrade, upgrade

    settings = get_settings()
    where = display_url(settings.database_url)
    try:
        if args.action == "upgrade":
            upgrade(settings, args.revision or "head")
        elif args.revision is None or not args.yes:
            print(
                "caliper: a downgrade drops tables and their rows: name the revision (`base` drops every table) "
                "and confirm with --yes",
                file=sys.stderr,
            )
            return 2
        else:
            downgrade(settings, args.revision)
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


def _keys(args: argparse.Namespace) -> int:
    """API keys on DATABASE_URL: the new key is printed once (only its salted digest is stored)."""
    import json

    from app.storage.db import make_engine, make_session_factory
    from app.storage.keys import ApiKeyRepository

    settings = get_settings()
    unmigrated = _migration_fault(settings)
    if unmigrated is not None:
        print(f"caliper: {unmigrated}", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    try:
        keys = ApiKeyRepository(make_session_factory(engine))
        if args.action == "create":
            record, token = keys.create(args.project, args.role, args.name or "")
            print(json.dumps({"id": record.id, "project": record.project, "role": record.role, "key": token})
                  if args.json else token)  # fmt: skip
        elif args.action == "list":
            rows = [
                {"id": k.id, "project": k.project, "role": k.role, "name": k.name,
                 "created_at": k.created_at.isoformat(), "revoked": k.revoked_at is not None}
                for k in keys.list(args.project)
            ]  # fmt: skip
            for row in rows if not args.json else []:
                state = "revoked" if row["revoked"] else "live"
                print(f"{row['id']}  {row['project']}  {row['role']:<5}  {state:<7}  {row['name']}")
            if args.json:
                print(json.dumps(rows, indent=2))
        elif not keys.revoke(args.key_id):
            print(f"caliper: no live key with id {args.key_id!r}", file=sys.stderr)
            return 2
        else:
            print(f"caliper: key {args.key_id} revoked")
        return 0
    except Exception as exc:  # the database and the driver: a message, not a traceback
        print(f"caliper: keys {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def add_parsers(sub: Any) -> None:
    """serve, db, keys and export, added to the `caliper` command."""
    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default=None, help="address to bind (default: CALIPER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default: CALIPER_PORT, 8000)")
    serve.add_argument(
        "--workers", type=int, default=None, help="server processes (default: CALIPER_WORKERS, 1; the image: CPUs)"
    )
    serve.set_defaults(func=_serve)
    db = sub.add_parser("db", help="database migrations (DATABASE_URL)")
    db.add_argument("action", choices=["upgrade", "downgrade"], help="upgrade (to head by default) or downgrade")
    db.add_argument(
        "revision",
        nargs="?",
        default=None,
        help="a migration id (upgrade: default head; downgrade: required, base drops all)",
    )
    db.add_argument("--yes", action="store_true", help="confirm a downgrade (it drops tables and their rows)")
    db.set_defaults(func=_db)
    keys = sub.add_parser(
        "keys",
        help="API keys (CALIPER_AUTH=required): create, list, revoke",
        epilog="exit codes: 0 done; 2 usage, database or unknown key",
    )
    actions = keys.add_subparsers(dest="action", required=True, help="what to do with keys")
    create = actions.add_parser("create", help="make a key and print it (once: only its digest is stored)")
    create.add_argument("--project", required=True, type=_project_name, help="the project the key's calls act in")
    create.add_argument("--role", choices=list(ROLES), default="write", help="read, write (default) or admin")
    create.add_argument("--name", help="a note to recognise the key by in `keys list`")
    create.add_argument("--json", action="store_true", help="print id, project, role and key as JSON")
    listing = actions.add_parser("list", help="keys, newest first (never their secrets)")
    listing.add_argument("--project", help="only this project's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a key: refused from the next request on")
    revoke.add_argument("key_id", help="the key's id (`keys list`; the part after `caliper_`)")
    keys.set_defaults(func=_keys)
    add_export_parsers(sub)


def _project_name(text: str) -> str:
    if not re.fullmatch(PROJECT_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError("1–64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return text


build_parser = client_cli.build_parser
main = client_cli.main


if __name__ == "__main__":
    raise SystemExit(main())

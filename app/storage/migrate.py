"""Alembic driven from code: `caliper db upgrade`, readiness (at head?) and the models/migrations check."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from app.config import Settings
from app.storage.db import ensure_sqlite_directory


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(settings.migrations_dir))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    ensure_sqlite_directory(settings.database_url)
    command.upgrade(alembic_config(settings), revision)


def current_revision(settings: Settings, engine: Engine) -> str | None:
    """The database's migration (None before the first)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


def is_at_head(settings: Settings, engine: Engine) -> bool:
    current, heads = schema_revisions(settings, engine)
    return current == heads


def schema_revisions(settings: Settings, engine: Engine) -> tuple[set[str], set[str]]:
    """The database's migration heads and the scripts' heads (equal when migrated)."""
    heads = set(ScriptDirectory.from_config(alembic_config(settings)).get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    return current, heads

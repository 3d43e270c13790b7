"""projects: project_id on every resource (existing rows go to `default`), per-project pipeline names and
idempotency keys, and api_keys

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCOPED = ("evaluations", "calibrators", "gates", "detectors", "sdm_estimators", "models", "pipelines")
PROJECT = sa.String(length=64)


def _idempotency_keys(*key: str) -> None:
    """Claims live a day at most: the table is made again rather than migrated."""
    op.drop_table("idempotency_keys")
    op.create_table(
        "idempotency_keys",
        *([sa.Column("project_id", PROJECT, nullable=False)] if "project_id" in key else []),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("request", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint(*key, name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False)


def _pipeline_names(project: bool) -> None:
    """The counters, copied into a table keyed by (project, name), or back (downgrade)."""
    op.rename_table("pipeline_names", "pipeline_names_old")
    if op.get_bind().dialect.name == "postgresql":  # constraint names are schema-wide there
        op.execute("ALTER TABLE pipeline_names_old RENAME CONSTRAINT pk_pipeline_names TO pk_pipeline_names_old")
    op.create_table(
        "pipeline_names",
        *([sa.Column("project_id", PROJECT, nullable=False)] if project else []),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*(["project_id"] if project else []), "name", name=op.f("pk_pipeline_names")),
    )
    if project:
        op.execute(
            "INSERT INTO pipeline_names (project_id, name, last_version) "
            "SELECT 'default', name, last_version FROM pipeline_names_old"
        )
    else:
        op.execute(
            "INSERT INTO pipeline_names (name, last_version) "
            "SELECT name, MAX(last_version) FROM pipeline_names_old GROUP BY name"
        )
    op.drop_table("pipeline_names_old")


def upgrade() -> None:
    for table in SCOPED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("project_id", PROJECT, nullable=False, server_default="default"))
            batch_op.drop_index(f"ix_{table}_created_at_id")
            batch_op.create_index(f"ix_{table}_project_id_created_at_id", ["project_id", "created_at", "id"])
            if table == "pipelines":
                batch_op.drop_index("ix_pipelines_name_version")
                batch_op.create_index(
                    "ix_pipelines_project_id_name_version", ["project_id", "name", "version"], unique=True
                )
        with op.batch_alter_table(table, schema=None) as batch_op:  # new rows always name their project
            batch_op.alter_column("project_id", existing_type=PROJECT, server_default=None)
    _pipeline_names(project=True)
    _idempotency_keys("project_id", "key")
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project", PROJECT, nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("salt", sa.LargeBinary(length=16), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_project"), "api_keys", ["project"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_api_keys_project"), table_name="api_keys")
    op.drop_table("api_keys")
    _idempotency_keys("key")
    _pipeline_names(project=False)
    for table in SCOPED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "pipelines":
                batch_op.drop_index("ix_pipelines_project_id_name_version")
                batch_op.create_index("ix_pipelines_name_version", ["name", "version"], unique=True)
            batch_op.drop_index(f"ix_{table}_project_id_created_at_id")
            batch_op.create_index(f"ix_{table}_created_at_id", ["created_at", "id"])
            batch_op.drop_column("project_id")

"""pipelines: named, versioned deployments of a model with its heads (exports in the artifact store), and
the last version given to each name

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("calibrator_id", sa.String(length=32), nullable=True),
        sa.Column("detector_id", sa.String(length=32), nullable=True),
        sa.Column("sdm_id", sa.String(length=32), nullable=True),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipelines")),
    )
    op.create_table(
        "pipeline_names",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pipeline_names")),
    )
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.create_index("ix_pipelines_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pipelines_model_id"), ["model_id"], unique=False)
        batch_op.create_index("ix_pipelines_name_version", ["name", "version"], unique=True)
        batch_op.create_index(batch_op.f("ix_pipelines_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pipelines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipelines_sha256"))
        batch_op.drop_index("ix_pipelines_name_version")
        batch_op.drop_index(batch_op.f("ix_pipelines_model_id"))
        batch_op.drop_index("ix_pipelines_created_at_id")
    op.drop_table("pipelines")
    op.drop_table("pipeline_names")

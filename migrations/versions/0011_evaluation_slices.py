"""evaluations.slices (every loss and metric per group of rows) and evaluations.metric_lists (metrics whose
value is a list: per class, or a confusion matrix); models.binary (logits read as one log-odds per row)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slices", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("metric_lists", sa.JSON(), nullable=True))
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("binary", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("binary")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("metric_lists")
        batch_op.drop_column("slices")

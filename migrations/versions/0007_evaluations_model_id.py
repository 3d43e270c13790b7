"""evaluations.model_id: the uploaded model an evaluation ran

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_evaluations_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_model_id"))
        batch_op.drop_column("model_id")

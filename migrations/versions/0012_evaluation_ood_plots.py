"""evaluations.detector_id (the detector of a model evaluation's OOD separation) and evaluations.ood_plots
(that separation's thinned ROC curve and score histograms, drawn by the web report)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detector_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("ood_plots", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_evaluations_detector_id"), ["detector_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_detector_id"))
        batch_op.drop_column("ood_plots")
        batch_op.drop_column("detector_id")

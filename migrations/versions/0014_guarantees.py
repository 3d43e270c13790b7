"""guarantees: split conformal predictors (q̂ per predictor or per class) and label-free accuracy estimates

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('conformal_predictors',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('classes', sa.Integer(), nullable=False),
    sa.Column('n_calibration', sa.Integer(), nullable=False),
    sa.Column('calibrator_id', sa.String(length=32), nullable=True),
    sa.Column('model', sa.String(length=256), nullable=True),
    sa.Column('dataset', sa.String(length=256), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('quantiles', sa.JSON(), nullable=False),
    sa.Column('fit_report', sa.JSON(), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conformal_predictors'))
    )
    with op.batch_alter_table('conformal_predictors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conformal_predictors_dataset'), ['dataset'], unique=False)
        batch_op.create_index(batch_op.f('ix_conformal_predictors_method'), ['method'], unique=False)
        batch_op.create_index(batch_op.f('ix_conformal_predictors_model'), ['model'], unique=False)
        batch_op.create_index('ix_conformal_predictors_project_id_created_at_id', ['project_id', 'created_at', 'id'], unique=False)

    op.create_table('estimates',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('calibrator_id', sa.String(length=32), nullable=True),
    sa.Column('model_id', sa.String(length=32), nullable=True),
    sa.Column('model', sa.String(length=256), nullable=True),
    sa.Column('dataset', sa.String(length=256), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('estimates', sa.JSON(), nullable=False),
    sa.Column('mean_confidence', sa.Float(), nullable=False),
    sa.Column('reference', sa.JSON(), nullable=True),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_estimates'))
    )
    with op.batch_alter_table('estimates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_estimates_dataset'), ['dataset'], unique=False)
        batch_op.create_index(batch_op.f('ix_estimates_model'), ['model'], unique=False)
        batch_op.create_index('ix_estimates_project_id_created_at_id', ['project_id', 'created_at', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('estimates', schema=None) as batch_op:
        batch_op.drop_index('ix_estimates_project_id_created_at_id')
        batch_op.drop_index(batch_op.f('ix_estimates_model'))
        batch_op.drop_index(batch_op.f('ix_estimates_dataset'))

    op.drop_table('estimates')
    with op.batch_alter_table('conformal_predictors', schema=None) as batch_op:
        batch_op.drop_index('ix_conformal_predictors_project_id_created_at_id')
        batch_op.drop_index(batch_op.f('ix_conformal_predictors_model'))
        batch_op.drop_index(batch_op.f('ix_conformal_predictors_method'))
        batch_op.drop_index(batch_op.f('ix_conformal_predictors_dataset'))

    op.drop_table('conformal_predictors')

"""crowd quality: replicas (crop groups), gold truths and gold scores, replica agreement and consensus, crop
difficulty, review comments pinned to a cell or point

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 23:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('crop_group', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('crowd_role', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('gold_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('difficulty', sa.Float(), nullable=True))
        batch.add_column(sa.Column('difficulty_detail', sa.JSON(), nullable=True))
        batch.create_index(batch.f('ix_tasks_crop_group'), ['crop_group'], unique=False)
    with op.batch_alter_table('reviews') as batch:
        batch.add_column(sa.Column('pin', sa.JSON(), nullable=True))
    op.create_table(
        'gold_truths',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('project_id', sa.Integer(), nullable=False),
        sa.Column('source_task_id', sa.Integer(), nullable=False),
        sa.Column('truth_key', sa.String(length=1024), nullable=False),
        sa.Column('start_key', sa.String(length=1024), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_gold_truths_project_id_projects')),
        sa.ForeignKeyConstraint(['source_task_id'], ['tasks.id'], name=op.f('fk_gold_truths_source_task_id_tasks')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gold_truths')),
        sa.UniqueConstraint('source_task_id', name=op.f('uq_gold_truths_source_task_id')),
    )
    op.create_index(op.f('ix_gold_truths_project_id'), 'gold_truths', ['project_id'], unique=False)
    op.create_table(
        'gold_scores',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('worker_ref', sa.String(length=200), nullable=True),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('f1', sa.Float(), nullable=False),
        sa.Column('f1_layers', sa.JSON(), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_gold_scores_task_id_tasks')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gold_scores')),
    )
    op.create_index(op.f('ix_gold_scores_task_id'), 'gold_scores', ['task_id'], unique=False)
    op.create_index(op.f('ix_gold_scores_worker_ref'), 'gold_scores', ['worker_ref'], unique=False)
    op.create_table(
        'crop_agreements',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('crop_group', sa.Integer(), nullable=False),
        sa.Column('batch_id', sa.Integer(), nullable=False),
        sa.Column('agreement', sa.Float(), nullable=False),
        sa.Column('pairs', sa.JSON(), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('consensus_task_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_crop_agreements_batch_id_batches')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_crop_agreements')),
        sa.UniqueConstraint('crop_group', name=op.f('uq_crop_agreements_crop_group')),
    )
    op.create_index(op.f('ix_crop_agreements_batch_id'), 'crop_agreements', ['batch_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_crop_agreements_batch_id'), table_name='crop_agreements')
    op.drop_table('crop_agreements')
    op.drop_index(op.f('ix_gold_scores_worker_ref'), table_name='gold_scores')
    op.drop_index(op.f('ix_gold_scores_task_id'), table_name='gold_scores')
    op.drop_table('gold_scores')
    op.drop_index(op.f('ix_gold_truths_project_id'), table_name='gold_truths')
    op.drop_table('gold_truths')
    with op.batch_alter_table('reviews') as batch:
        batch.drop_column('pin')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index(batch.f('ix_tasks_crop_group'))
        batch.drop_column('difficulty_detail')
        batch.drop_column('difficulty')
        batch.drop_column('gold_id')
        batch.drop_column('crowd_role')
        batch.drop_column('crop_group')

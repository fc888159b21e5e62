"""whole-image QC: tasks carry a kind (crop or qc); image_qc holds each stitched image's QC task, the stitched
labels it was last refreshed from, the conflicts stitch listed (with resolved flags) and the crop seams

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='crop'))
    op.create_table(
        'image_qc',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('image_id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('base_labels_key', sa.String(length=1024), nullable=False),
        sa.Column('conflicts', sa.JSON(), nullable=False),
        sa.Column('seams', sa.JSON(), nullable=False),
        sa.Column('stitched_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_image_qc_image_id_images')),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_image_qc_task_id_tasks')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_image_qc')),
        sa.UniqueConstraint('image_id', name=op.f('uq_image_qc_image_id')),
    )


def downgrade() -> None:
    op.drop_table('image_qc')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('kind')

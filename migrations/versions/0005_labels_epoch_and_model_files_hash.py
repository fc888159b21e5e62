"""tasks carry a labels epoch, bumped by every prelabel write (an edit commits only against the epoch it read);
model versions record the content hash of their files (caches are keyed by it; a changed starter is a new version);
dataset splits by spatial block (dataset_blocks)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dataset_blocks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('image_id', sa.Integer(), nullable=False),
        sa.Column('y0', sa.Integer(), nullable=False),
        sa.Column('x0', sa.Integer(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('split', sa.String(length=8), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_dataset_blocks_image_id_images')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_blocks')),
        sa.UniqueConstraint('image_id', 'y0', 'x0', name=op.f('uq_dataset_blocks_image_id_y0_x0')),
    )
    op.create_index(op.f('ix_dataset_blocks_image_id'), 'dataset_blocks', ['image_id'], unique=False)
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('labels_epoch', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('files_sha256', sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_index(op.f('ix_dataset_blocks_image_id'), table_name='dataset_blocks')
    op.drop_table('dataset_blocks')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('files_sha256')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('labels_epoch')

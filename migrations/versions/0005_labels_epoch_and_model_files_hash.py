"""tasks carry a labels epoch, bumped by every prelabel write (an edit commits only against the epoch it read);
model versions record the content hash of their files (caches are keyed by it; a changed starter is a new version)

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
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('labels_epoch', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('files_sha256', sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_column('files_sha256')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('labels_epoch')

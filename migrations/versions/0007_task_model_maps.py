"""tasks keep the storage key of their crop's model maps (assist tools) and the model version that made them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('maps_key', sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column('maps_model', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('maps_model')
        batch.drop_column('maps_key')

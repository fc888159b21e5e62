"""images stored as chunks (whole slides): the chunk side, and the source file's pyramid levels

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 23:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.add_column(sa.Column('chunk_size', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('levels', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.drop_column('levels')
        batch.drop_column('chunk_size')

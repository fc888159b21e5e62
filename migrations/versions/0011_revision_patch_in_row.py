"""a revision may hold its (small) patch in its row instead of an object in storage

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 23:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('revisions') as batch:
        batch.add_column(sa.Column('patch_bytes', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # the older schema has nowhere to keep these patches: refuse rather than lose history
    held = op.get_bind().execute(sa.text("SELECT count(*) FROM revisions WHERE patch_bytes IS NOT NULL")).scalar()
    if held:
        raise RuntimeError(f"{held} revisions keep their patch in their row (CELLLOOP_PATCH_IN_ROW_BYTES): "
                           f"downgrading would lose them")
    with op.batch_alter_table('revisions') as batch:
        batch.drop_column('patch_bytes')

"""revisions may store only their patch (labels snapshot optional)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column in place
    with op.batch_alter_table('revisions') as batch:
        batch.alter_column('labels_key', existing_type=sa.String(length=1024), nullable=True)


def downgrade() -> None:
    # Patch-only revisions get no snapshot back: going below 0002 needs every revision to have one.
    bind = op.get_bind()
    missing = bind.execute(sa.text("SELECT count(*) FROM revisions WHERE labels_key IS NULL")).scalar()
    if missing:
        raise RuntimeError(f"{missing} revisions store only a patch; schema 0001 cannot hold them")
    with op.batch_alter_table('revisions') as batch:
        batch.alter_column('labels_key', existing_type=sa.String(length=1024), nullable=False)

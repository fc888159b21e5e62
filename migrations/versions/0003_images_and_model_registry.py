"""many images per project, crops tied to their image, batch and registry bookkeeping, frozen dataset tiles

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 01:10:00

A project's single image (projects.image_key, height, width, ...) becomes its first row in `images`; every
existing task points at it.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_MOVED_TO_IMAGES = ('image_key', 'labels_key', 'pixel_size_um', 'height', 'width', 'source_path')


def upgrade() -> None:
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('image_key', sa.String(length=1024), nullable=False),
    sa.Column('labels_key', sa.String(length=1024), nullable=True),
    sa.Column('coverage_key', sa.String(length=1024), nullable=True),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('pixel_size_um', sa.Float(), nullable=True),
    sa.Column('tissue', sa.String(length=200), nullable=True),
    sa.Column('platform', sa.String(length=200), nullable=True),
    sa.Column('source_path', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stitched_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_images_project_id_projects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('project_id', 'name', name=op.f('uq_images_project_id_name'))
    )
    op.create_index(op.f('ix_images_project_id'), 'images', ['project_id'], unique=False)
    op.create_table('dataset_tiles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('y0', sa.Integer(), nullable=False),
    sa.Column('x0', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_dataset_tiles_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_tiles')),
    sa.UniqueConstraint('image_id', 'y0', 'x0', 'size', name=op.f('uq_dataset_tiles_image_id_y0_x0_size'))
    )
    op.create_index(op.f('ix_dataset_tiles_image_id'), 'dataset_tiles', ['image_id'], unique=False)

    # each project's image becomes its first image row (same id as the project: the table is new)
    op.execute(
        "INSERT INTO images (id, project_id, name, image_key, labels_key, height, width, pixel_size_um, "
        "source_path, created_at) SELECT id, id, name, image_key, labels_key, height, width, pixel_size_um, "
        "source_path, created_at FROM projects"
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), COALESCE((SELECT max(id) FROM images), 0) + 1, false)")

    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('image_id', sa.Integer(), nullable=True))
        batch.create_index(batch.f('ix_tasks_image_id'), ['image_id'], unique=False)
        batch.create_foreign_key(batch.f('fk_tasks_image_id_images'), 'images', ['image_id'], ['id'])
    op.execute("UPDATE tasks SET image_id = (SELECT batches.project_id FROM batches WHERE batches.id = tasks.batch_id)")

    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('prelabel', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('crop_size', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('overlap', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('prelabeled_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('published_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('stitched_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('cycle', sa.JSON(), nullable=True))

    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('project_id', sa.Integer(), nullable=True))
        batch.create_index(batch.f('ix_model_versions_project_id'), ['project_id'], unique=False)
        batch.create_foreign_key(batch.f('fk_model_versions_project_id_projects'), 'projects', ['project_id'], ['id'])

    with op.batch_alter_table('projects') as batch:
        batch.add_column(sa.Column('model_channels', sa.JSON(), nullable=True))
        for column in _MOVED_TO_IMAGES:
            batch.drop_column(column)


def downgrade() -> None:
    # Schema 0002 holds one image per project: refuse rather than silently drop the others.
    bind = op.get_bind()
    crowded = bind.execute(sa.text(
        "SELECT count(*) FROM (SELECT project_id FROM images GROUP BY project_id HAVING count(*) > 1) AS many"
    )).scalar()
    empty = bind.execute(sa.text(
        "SELECT count(*) FROM projects WHERE NOT EXISTS (SELECT 1 FROM images WHERE images.project_id = projects.id)"
    )).scalar()
    if crowded or empty:
        raise RuntimeError(f"{crowded} projects hold several images and {empty} none; schema 0002 holds exactly one")

    with op.batch_alter_table('projects') as batch:
        batch.add_column(sa.Column('image_key', sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column('labels_key', sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column('pixel_size_um', sa.Float(), nullable=True))
        batch.add_column(sa.Column('height', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('width', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('source_path', sa.String(length=1024), nullable=True))
    for column in _MOVED_TO_IMAGES:
        op.execute(f"UPDATE projects SET {column} = (SELECT images.{column} FROM images "
                   f"WHERE images.project_id = projects.id)")
    with op.batch_alter_table('projects') as batch:
        batch.alter_column('image_key', existing_type=sa.String(length=1024), nullable=False)
        batch.alter_column('height', existing_type=sa.Integer(), nullable=False)
        batch.alter_column('width', existing_type=sa.Integer(), nullable=False)
        batch.drop_column('model_channels')

    with op.batch_alter_table('model_versions') as batch:
        batch.drop_constraint(batch.f('fk_model_versions_project_id_projects'), type_='foreignkey')
        batch.drop_index(batch.f('ix_model_versions_project_id'))
        batch.drop_column('project_id')

    with op.batch_alter_table('batches') as batch:
        for column in ('cycle', 'stitched_at', 'published_at', 'prelabeled_at', 'overlap', 'crop_size', 'prelabel'):
            batch.drop_column(column)

    with op.batch_alter_table('tasks') as batch:
        batch.drop_constraint(batch.f('fk_tasks_image_id_images'), type_='foreignkey')
        batch.drop_index(batch.f('ix_tasks_image_id'))
        batch.drop_column('image_id')

    op.drop_index(op.f('ix_dataset_tiles_image_id'), table_name='dataset_tiles')
    op.drop_table('dataset_tiles')
    op.drop_index(op.f('ix_images_project_id'), table_name='images')
    op.drop_table('images')

"""Migration 0003: a project's one image becomes its first `images` row and its tasks point at it; going back
restores the project's columns (and refuses when a project holds several images)."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from backend.store import db


def _seed_0002(url: str) -> None:
    db.upgrade(url, "0002")
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO projects (id, name, image_key, labels_key, channel_names, pixel_size_um, height, width, "
            "source_path, created_at) VALUES (7, 'slide', 'projects/7/image.npy.gz', NULL, '[\"dapi\", \"cd45\"]', "
            "0.5, 300, 400, '/data/slide.tif', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO batches (id, project_id, name, created_at) VALUES (3, 7, 'b1', CURRENT_TIMESTAMP)"))
        for task_id in (11, 12):
            conn.execute(text(
                "INSERT INTO tasks (id, batch_id, y0, x0, y1, x1, state, image_key, revision, token_nonce, "
                f"created_at, time_open_s) VALUES ({task_id}, 3, 0, 0, 270, 270, 'new', 'k', 0, 0, CURRENT_TIMESTAMP, 0)"))
    engine.dispose()


def _check(url: str) -> None:
    _seed_0002(url)
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            image = conn.execute(text("SELECT id, project_id, name, image_key, height, width, pixel_size_um, "
                                      "source_path FROM images")).one()
            assert tuple(image) == (7, 7, "slide", "projects/7/image.npy.gz", 300, 400, 0.5, "/data/slide.tif")
            assert conn.execute(text("SELECT image_id FROM tasks ORDER BY id")).scalars().all() == [7, 7]
        with engine.begin() as conn:  # a second image gets a fresh id (the sequence moved past the copied ids)
            conn.execute(text("INSERT INTO images (project_id, name, image_key, height, width, created_at) "
                              "VALUES (7, 'second', 'k2', 10, 10, CURRENT_TIMESTAMP)"))
        with pytest.raises(RuntimeError, match="several images"):
            db.downgrade(url, "0002")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM images WHERE name = 'second'"))
        db.downgrade(url, "0002")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT image_key, height, width, source_path FROM projects")).one()
            assert tuple(row) == ("projects/7/image.npy.gz", 300, 400, "/data/slide.tif")
            assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 2
    finally:
        engine.dispose()


def test_sqlite_existing_project_migrates_to_images_and_back(tmp_path):
    _check(f"sqlite:///{tmp_path / 'm.sqlite'}")


@pytest.mark.postgres
def test_postgres_existing_project_migrates_to_images_and_back(pg_url):
    _check(pg_url)

"""Alembic migrations build exactly the schema the models describe, on SQLite and on PostgreSQL, and
tear it down again."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from backend.store import db
from backend.store.models import Base


def _check_round_trip(url: str) -> None:
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            assert diff == [], f"migrations and models disagree: {diff}"
            tables = set(inspect(conn).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert db.current_revision(url) is not None
        db.downgrade(url, "base")
        with engine.connect() as conn:
            left = set(inspect(conn).get_table_names()) - {"alembic_version"}
        assert left == set()
        assert db.current_revision(url) is None
        db.upgrade(url)  # and back up again from nothing
        assert db.current_revision(url) is not None
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'm.sqlite'}")


@pytest.mark.postgres
def test_postgres_upgrade_matches_models_and_downgrades(pg_url):
    _check_round_trip(pg_url)

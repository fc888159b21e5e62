"""Alembic environment: the URL comes from the caller (`cellloop db upgrade` or a test), or from
CELLLOOP_DATABASE_URL / the embedded default when run as plain `alembic`."""
from __future__ import annotations

from alembic import context

from backend.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from backend.config import Config

    return Config.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    from backend.store.db import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # batch mode rebuilds a table by copy, drop and rename; with foreign keys enforced SQLite would
                # refuse to drop a table other rows point at. The pragma only works outside a transaction.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            # batch mode: SQLite cannot ALTER most things, so later migrations rebuild tables there
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=True, compare_type=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

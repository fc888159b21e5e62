"""Fixtures for the server: an app on a migrated database (SQLite file, or a fresh PostgreSQL database on
127.0.0.1:5432) with local or S3 storage, and a small project with users and tasks."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import pytest

from backend.store import db as dbmod
from backend.config import Config

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PASSWORD = "correct horse battery"


def _pg_answers() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return True
    except Exception:
        return False


def _pg_available() -> bool:
    """PostgreSQL runs on these machines; if it was stopped, start the local cluster once (as CI would)."""
    if _pg_answers():
        return True
    import glob
    import subprocess
    import time

    for version_dir in glob.glob("/etc/postgresql/*"):
        version = version_dir.rsplit("/", 1)[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, timeout=60)
    for _ in range(20):
        if _pg_answers():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not _pg_available():
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (the test suite needs it; .ci/run starts it)")
    import psycopg

    name = "cellloop_" + secrets.token_hex(4)
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class World:
    app: object
    config: Config
    client: object
    task_ids: list
    tokens: dict
    image: np.ndarray
    labels: np.ndarray

    def session(self):
        return self.app.extensions["cellloop.sessionmaker"]()

    def storage(self):
        return self.app.extensions["cellloop.storage"]


def make_world(tmp_path, database_url=None, storage_url=None, n_tasks=2) -> World:
    from backend.web.app import create_app
    from backend.web.auth import make_task_token
    from backend.cli.admin_commands import create_user
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService

    config = Config.from_env(
        instance_dir=tmp_path / "instance",
        database_url=database_url or f"sqlite:///{tmp_path / 'instance' / 'db.sqlite'}",
        storage_url=storage_url or str(tmp_path / "instance" / "storage"),
        secret_key="test-secret-" + secrets.token_hex(8),
    )
    dbmod.upgrade(config.database_url)
    app = create_app(config)
    app.config["TESTING"] = True
    rng = np.random.default_rng(0)
    image = rng.random((64, 96, 3), dtype=np.float32)
    labels = np.zeros((64, 96, 2), np.int32)
    labels[10:20, 10:20, 0] = 1
    labels[12:18, 12:18, 1] = 1
    labels[30:45, 40:60, 0] = 2
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    create_user(session, "rev", PASSWORD, "reviewer")
    create_user(session, "boss", PASSWORD, "admin")
    create_user(session, "ann", PASSWORD, "annotator")
    project = project_from_image(session, storage, name="p", image=image, channel_names=["dna", "mem", "cd45"])
    batch = Batch(project=project, name="b1")
    session.add(batch)
    svc = TaskService(session, storage)
    tasks = [svc.create_task(batch, (0, 0, 64, 96), image, labels) for _ in range(n_tasks)]
    session.commit()
    with app.app_context():
        tokens = {t.id: make_task_token(t) for t in tasks}
    ids = [t.id for t in tasks]
    session.close()
    return World(app, config, app.test_client(), ids, tokens, image, labels)


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


def login(client, username, password=PASSWORD) -> str:
    """Log in through the API like a browser page does; returns the CSRF token for later changes."""
    csrf = client.get("/api/auth/me").get_json()["csrf_token"]
    resp = client.post("/api/auth/login", json={"username": username, "password": password},
                       headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["csrf_token"]


@pytest.fixture
def instance(tmp_path):
    """A migrated SQLite instance with a local storage folder, as the loop's commands see it: (config, session,
    storage)."""
    from backend.store.storage import storage_from_url

    config = Config.from_env(instance_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                             storage_url=str(tmp_path / "storage"), secret_key="test-secret-key-" * 4)
    dbmod.upgrade(config.database_url)
    session = dbmod.make_sessionmaker(dbmod.make_engine(config.database_url))()
    yield config, session, storage_from_url(config.storage_url)
    session.close()

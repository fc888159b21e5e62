"""The admin CLI's expected failures are one line and exit 2: a database not migrated yet, a bad environment
variable, storage that cannot be reached; and an ingest that fails leaves no stored object and no row."""
from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
from sqlalchemy import create_engine, text

from backend.tasks import TaskService
from pipeline.cli import main

from .served import free_port


@pytest.fixture
def fresh_instance(tmp_path, monkeypatch):
    inst = tmp_path / "inst"
    monkeypatch.setenv("CELLLOOP_INSTANCE_DIR", str(inst))
    for name in ("DATABASE_URL", "STORAGE_URL", "SECRET_KEY"):
        monkeypatch.delenv(f"CELLLOOP_{name}", raising=False)
    return inst


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _slide(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, (np.random.default_rng(2).random((2, 300, 560)) * 1000).astype(np.uint16),
                     photometric="minisblack")
    return path


def test_database_not_migrated(fresh_instance, capsys):
    assert main(["users", "create", "alice", "--role", "reviewer", "--password", "long-enough-pw"]) == 2
    assert "no schema yet: run `cellloop db upgrade`" in _one_line_error(capsys)


def test_bad_environment_variable(fresh_instance, capsys, monkeypatch):
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CELLLOOP_TOKEN_MAX_AGE_S", "two weeks")
    assert main(["links"]) == 2
    assert "CELLLOOP_TOKEN_MAX_AGE_S must be an integer" in _one_line_error(capsys)
    monkeypatch.delenv("CELLLOOP_TOKEN_MAX_AGE_S")
    monkeypatch.setenv("CELLLOOP_SECRET_KEY", "tiny")
    assert main(["links"]) == 2
    assert "secret key" in _one_line_error(capsys)


def test_storage_unreachable(fresh_instance, capsys, monkeypatch, tmp_path, aws_test_env):
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CELLLOOP_STORAGE_URL", f"s3://nowhere/x?endpoint_url=http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert main(["ingest", str(_slide(tmp_path)), "--name", "s"]) == 2
    assert "storage at s3://nowhere/x is unreachable" in _one_line_error(capsys)
    assert time.monotonic() - started < 60


def test_failed_ingest_leaves_no_object_and_no_row(fresh_instance, capsys, monkeypatch, tmp_path):
    assert main(["db", "upgrade"]) == 0
    real_create = TaskService.create_task
    calls = []

    def failing_create(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(TaskService, "create_task", failing_create)
    with pytest.raises(OSError):
        main(["ingest", str(_slide(tmp_path)), "--name", "slide", "--crop", "270"])
    assert len(calls) == 3
    stored = [p for p in (fresh_instance / "storage").rglob("*") if p.is_file()]
    assert stored == []
    engine = create_engine(f"sqlite:///{fresh_instance / 'cellloop.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM projects")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 0
    engine.dispose()


def test_refused_downgrade_is_one_line(tmp_path, monkeypatch, capsys):
    from .conftest import make_world

    world = make_world(tmp_path)
    token = world.tokens[world.task_ids[0]]
    assert world.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint", "params": {
        "layer": 0, "points": [[5, 5]], "radius": 2, "label": 4}}).status_code == 200
    monkeypatch.setenv("CELLLOOP_DATABASE_URL", world.config.database_url)
    monkeypatch.setenv("CELLLOOP_SECRET_KEY", world.config.secret_key)
    assert main(["db", "downgrade", "0001"]) == 2
    assert "downgrade refused" in _one_line_error(capsys)

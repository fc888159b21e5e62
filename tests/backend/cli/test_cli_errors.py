"""The admin CLI's expected failures are one line and exit 2: a database not migrated yet, a bad environment
variable, storage that cannot be reached; and an ingest that fails leaves no stored object and no row."""
from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
from sqlalchemy import create_engine, text

from backend.store import projects
from backend.tasks import TaskService
from backend.cli import main
from pipeline.cli import CLIError

from ..served import free_port


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


def test_server_settings_are_checked_before_gunicorn_starts(monkeypatch):
    from backend.cli.admin_commands import gunicorn_argv

    argv = gunicorn_argv(host="127.0.0.1", port=8000, workers=2)
    assert argv[argv.index("--keep-alive") + 1] == "5" and argv[argv.index("--threads") + 1] == "4"
    monkeypatch.setenv("CELLLOOP_KEEPALIVE_S", "0")
    with pytest.raises(CLIError, match="CELLLOOP_KEEPALIVE_S must be a positive integer"):
        gunicorn_argv(host="127.0.0.1", port=8000, workers=2)


def test_storage_unreachable(fresh_instance, capsys, monkeypatch, tmp_path, aws_test_env):
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CELLLOOP_STORAGE_URL", f"s3://nowhere/x?endpoint_url=http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert main(["ingest", str(_slide(tmp_path)), "--name", "s"]) == 2
    assert "storage at s3://nowhere/x is unreachable" in _one_line_error(capsys)
    assert time.monotonic() - started < 60


def _stored(instance) -> list[str]:
    root = instance / "storage"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _count(instance, table) -> int:
    engine = create_engine(f"sqlite:///{instance / 'cellloop.sqlite'}")
    with engine.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    engine.dispose()
    return count


def test_failed_ingest_leaves_no_object_and_no_row(fresh_instance, monkeypatch, tmp_path):
    """Adding images is all or nothing: the second image failing takes back the first one's objects and rows."""
    assert main(["db", "upgrade"]) == 0
    real_add = projects.add_image
    calls = []

    def failing_add(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_add(*args, **kwargs)

    monkeypatch.setattr(projects, "add_image", failing_add)
    first, second = _slide(tmp_path), tmp_path / "second.tif"
    second.write_bytes(first.read_bytes())
    with pytest.raises(OSError):
        main(["ingest", str(first), str(second), "--project", "slides"])
    assert len(calls) == 2
    assert _stored(fresh_instance) == []
    assert _count(fresh_instance, "projects") == 0 and _count(fresh_instance, "images") == 0


def test_failed_crop_leaves_whole_images_and_no_orphan_object(fresh_instance, monkeypatch, tmp_path):
    """Cutting crops commits one image at a time: a failure mid-image takes back that image's crops, and the
    ingested image stays (so `cellloop batch create` resumes) with nothing stored that no row names."""
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
    assert _count(fresh_instance, "tasks") == 0 and _count(fresh_instance, "images") == 1
    assert [key for key in _stored(fresh_instance) if "/images/" not in key] == []


def test_refused_downgrade_is_one_line(tmp_path, monkeypatch, capsys):
    from ..conftest import make_world

    world = make_world(tmp_path)
    token = world.tokens[world.task_ids[0]]
    assert world.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint", "params": {
        "layer": 0, "points": [[5, 5]], "radius": 2, "label": 4}}).status_code == 200
    monkeypatch.setenv("CELLLOOP_DATABASE_URL", world.config.database_url)
    monkeypatch.setenv("CELLLOOP_SECRET_KEY", world.config.secret_key)
    assert main(["db", "downgrade", "0001"]) == 2
    assert "downgrade refused" in _one_line_error(capsys)

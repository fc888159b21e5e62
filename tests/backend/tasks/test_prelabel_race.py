"""Prelabel never lands under a person's work, and a person's edit never lands on labels it did not read.

The segmentation job is monkeypatched to let annotators act through the HTTP API while the model runs: one crop is
edited outright (prelabel must leave it alone and list it), and one edit reads revision 0's labels before the
prelabel write but reaches its conditional update after it (it must be refused with 409, so no patch computed on
the replaced labels is stored). The annotator then reloads and edits; a fresh app with an empty cache (a server
restart) reads every task, and the edits are all there. Run on SQLite and on PostgreSQL."""
from __future__ import annotations

import io
import secrets
import threading

import numpy as np
import pytest
from sqlalchemy import select

from backend import loop
from backend.config import Config
from backend.edits import apply_edit
from backend.loop import prelabel as prelabel_module
from backend.store import db as dbmod
from backend.store.arrays import decode_array
from backend.store.models import Batch, Revision, Task, TaskState
from backend.store.projects import add_image, create_project
from backend.store.storage import storage_from_url
from backend.tasks import RevisionStore
from pipeline.synthetic import make_tissue


def _config(tmp_path, database_url):
    return Config.from_env(instance_dir=tmp_path / "instance",
                           database_url=database_url or f"sqlite:///{tmp_path / 'db.sqlite'}",
                           storage_url=str(tmp_path / "storage"), secret_key="test-secret-" + secrets.token_hex(8))


def _setup(tmp_path, database_url=None):
    from backend.web.app import create_app
    from backend.web.auth import make_task_token

    config = _config(tmp_path, database_url)
    dbmod.upgrade(config.database_url)
    app = create_app(config)
    app.config["TESTING"] = True
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    X, _ = make_tissue((160, 160), seed=3)
    add_image(session, storage, project, X, name="im")
    session.commit()
    batch, made = loop.create_batch(session, storage, project, "b", all_new=True, size=96, overlap=32)
    assert made == 4
    # an earlier model's prelabel (one small cell per crop), published: the admin's re-prelabel is the race
    svc = RevisionStore(session, storage)
    tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)))
    for task in tasks:
        earlier = np.zeros(task.shape + (2,), np.int32)
        earlier[0:4, 0:4] = 1
        assert svc.write_prelabel(task, earlier, "earlier-model")
    batch.prelabel = "earlier-model"
    session.commit()
    loop.publish_batch(session, config, batch, out=io.StringIO(), base_url="http://x")
    ids = [t.id for t in tasks]
    with app.app_context():
        tokens = {t: make_task_token(session.get(Task, t)) for t in ids}
    session.close()
    return config, app, ids, tokens


def _labels(client, token):
    resp = client.get(f"/api/task/{token}/labels")
    assert resp.status_code == 200
    return decode_array(resp.data), int(resp.headers["X-Revision"])


def _paint(client, token, base, label, row):
    return client.post(f"/api/task/{token}/edit", json={
        "base_revision": base, "tool": "paint",
        "params": {"layer": 0, "points": [[row, 5], [row, 40]], "radius": 2, "label": label}})


@pytest.mark.parametrize("backend_db", ["sqlite", "postgresql"])
def test_edits_racing_a_prelabel_run_are_never_lost_nor_replayed_on_other_labels(tmp_path, monkeypatch, backend_db,
                                                                                  request):
    database_url = request.getfixturevalue("pg_url") if backend_db == "postgresql" else None
    config, app, ids, tokens = _setup(tmp_path, database_url)
    edited_id, racing_id = ids[0], ids[1]
    client = app.test_client()

    edit_read = threading.Event()   # the racing edit has read revision 0's labels and computed its patch
    written = threading.Event()     # the prelabel write of the racing crop has committed
    replies = {}
    original_commit = RevisionStore._commit_revision

    def paused_commit(self, task, *args, **kwargs):
        if task.id == racing_id and threading.current_thread().name == "racing-edit":
            edit_read.set()
            assert written.wait(60), "the prelabel write never came"
        return original_commit(self, task, *args, **kwargs)

    original_write = RevisionStore.write_prelabel

    def signalling_write(self, task, labels, label):
        done = original_write(self, task, labels, label)
        if task.id == racing_id:
            written.set()
        return done

    def racing_edit():
        with app.test_client() as own:
            replies["racing"] = _paint(own, tokens[racing_id], 0, 77, 20)

    original_job = prelabel_module.segment_image_job

    def job_with_annotators(*args):
        result = original_job(*args)
        # while the model "runs": one annotator edits a crop outright ...
        replies["edited"] = _paint(client, tokens[edited_id], 0, 55, 10)
        # ... and another's edit reads the old revision 0 now but commits only after the prelabel write
        thread = threading.Thread(target=racing_edit, name="racing-edit")
        thread.start()
        assert edit_read.wait(60)
        replies["thread"] = thread
        return result

    monkeypatch.setattr(RevisionStore, "_commit_revision", paused_commit)
    monkeypatch.setattr(RevisionStore, "write_prelabel", signalling_write)
    monkeypatch.setattr(prelabel_module, "segment_image_job", job_with_annotators)

    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    batch = session.scalar(select(Batch).where(Batch.name == "b"))
    with pytest.raises(loop.LoopError, match="published"):
        loop.prelabel_batch(session, storage, config, batch, "baseline")
    result = loop.prelabel_batch(session, storage, config, batch, "baseline", force=True)
    replies["thread"].join(60)
    session.close()

    assert replies["edited"].status_code == 200
    # the crop edited mid-run is left alone and reported; the other three got the prelabel
    assert result["touched"] == [edited_id] and result["crops"] == 3 and result["left_alone"] == 1
    # the edit computed on the replaced labels is refused, naming the revision to reload (the editor reloads)
    racing = replies["racing"]
    assert racing.status_code == 409, racing.get_json()
    assert racing.get_json()["revision"] == 0 and "replaced" in racing.get_json()["error"]

    # the racing annotator reloads (now the prelabel) and makes three edits on it
    prelabel, rev = _labels(client, tokens[racing_id])
    assert rev == 0 and prelabel.any()
    for i, row in enumerate((20, 40, 60)):
        assert _paint(client, tokens[racing_id], i, 80 + i, row).status_code == 200
    served, rev = _labels(client, tokens[racing_id])
    assert rev == 3

    # a server restart: a fresh app, a fresh session, an empty cache
    from backend.web.app import create_app

    monkeypatch.undo()
    fresh = create_app(config).test_client()
    after, rev = _labels(fresh, tokens[racing_id])
    assert rev == 3 and np.array_equal(after, served)
    # the prelabel plus the three strokes, replayed here with the edit engine itself; nothing of the refused edit
    crop = decode_array(fresh.get(f"/api/task/{tokens[racing_id]}/image").data)
    expected = prelabel.copy()
    for i, row in enumerate((20, 40, 60)):
        apply_edit(expected, crop, "paint", {"layer": 0, "points": [[row, 5], [row, 40]], "radius": 2,
                                             "label": 80 + i}).apply(expected)
        assert (after[..., 0] == 80 + i).sum() > 20
    assert np.array_equal(after, expected)
    assert not (after[..., 0] == 77).any()
    edited, rev = _labels(fresh, tokens[edited_id])
    assert rev == 1 and (edited[10, 5:41, 0] == 55).all()
    earlier = np.zeros_like(edited)
    earlier[0:4, 0:4] = 1
    assert np.array_equal(np.where(edited == 55, 0, edited), earlier)  # the earlier prelabel under the stroke

    check = dbmod.make_sessionmaker(dbmod.make_engine(config.database_url))()
    states = {t.id: t.state for t in check.scalars(select(Task).where(Task.id.in_(ids)))}
    assert states[edited_id] is TaskState.assigned and states[racing_id] is TaskState.assigned
    firsts = {r.task_id: r.params for r in check.scalars(select(Revision).where(Revision.number == 0))}
    assert firsts[racing_id] == {"prelabel": "baseline"} and firsts[edited_id] != {"prelabel": "baseline"}
    check.close()


def test_published_batch_is_refused_without_force(tmp_path):
    config = _config(tmp_path, None)
    dbmod.upgrade(config.database_url)
    session = dbmod.make_sessionmaker(dbmod.make_engine(config.database_url))()
    storage = storage_from_url(config.storage_url)
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    X, _ = make_tissue((128, 128), seed=1)
    add_image(session, storage, project, X, name="im")
    session.commit()
    batch, _ = loop.create_batch(session, storage, project, "b", all_new=True, size=96, overlap=32)
    loop.prelabel_batch(session, storage, config, batch, "none")
    loop.publish_batch(session, config, batch, out=io.StringIO(), base_url="http://x")
    with pytest.raises(loop.LoopError, match="published.*--force"):
        loop.prelabel_batch(session, storage, config, batch, "baseline")
    task = session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)).first()
    from backend.tasks import Actor, TaskService

    TaskService(session, storage).open(task, Actor(ref="w1"))  # opened, never edited
    forced = loop.prelabel_batch(session, storage, config, batch, "baseline", force=True)
    assert forced["touched"] == [task.id] and forced["crops"] == 3
    session.expire_all()
    assert not RevisionStore(session, storage).labels(task).any()

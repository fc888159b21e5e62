"""The crowd edit of a task this worker committed last (RevisionStore.edit_known): no SELECT of the task row, one
conditional statement on PostgreSQL (update and revision insert together), and still every answer the ordinary path
gives: a revoked link 404, a stale base 409, an edit after submit 409, nothing stored for any of them, and the
stored history replaying to exactly the labels served. On SQLite and PostgreSQL."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import event, select, update

from backend.edits import Patch
from backend.store.arrays import decode_array
from backend.store.models import Revision, Task
from backend.tasks import Actor, TaskService

from ..conftest import make_world


@pytest.fixture(params=["sqlite", "postgres", "postgres-sqlalchemy"])
def known_world(request, tmp_path, monkeypatch):
    """postgres: the statement straight through psycopg; postgres-sqlalchemy: the same statement built by SQLAlchemy
    (what another PostgreSQL driver runs)."""
    from backend.tasks import revisions

    url = request.getfixturevalue("pg_url") if request.param.startswith("postgres") else None
    monkeypatch.setattr(revisions, "DIRECT_PSYCOPG", request.param == "postgres")
    world = make_world(tmp_path, database_url=url, n_tasks=1)
    world.form = request.param
    return world


def _statements(world):
    seen: list[str] = []
    event.listen(world.app.extensions["cellloop.engine"], "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: seen.append(statement))
    return seen


def _paint(client, token, base, y, label=7):
    return client.post(f"/api/task/{token}/edit", json={"base_revision": base, "tool": "paint", "params": {
        "layer": 0, "points": [[y, 20], [y, 40]], "radius": 2, "label": label}})


def _numbers(world, task_id):
    with world.session() as s:
        return list(s.scalars(select(Revision.number).where(Revision.task_id == task_id).order_by(Revision.number)))


def test_known_task_edits_skip_the_task_select_and_store_what_they_answer(known_world):
    w = known_world
    (task_id,), client = w.task_ids, w.client
    token = w.tokens[task_id]
    rev = client.post(f"/api/task/{token}/open").get_json()["revision"]
    expected = w.labels.copy()
    statements = _statements(w)
    for i in range(6):
        statements.clear()
        resp = _paint(client, token, rev, 5 + 8 * i, label=7 + i)
        assert resp.status_code == 200, resp.get_json()
        Patch.from_bytes(resp.data).apply(expected, check=True)
        rev = int(resp.headers["X-Revision"])
        if i >= 1:  # the first edit on this worker reads the task; later ones know it
            assert not any("FROM tasks" in s for s in statements), statements
            if w.form == "postgres":  # one statement, past SQLAlchemy: nothing it would see
                assert statements == [], statements
            elif w.form == "postgres-sqlalchemy":
                assert len(statements) == 1 and statements[0].lstrip().startswith("WITH moved AS"), statements
    assert rev == 6 and _numbers(w, task_id) == list(range(7))
    served = client.get(f"/api/task/{token}/labels")
    assert int(served.headers["X-Revision"]) == 6
    assert np.array_equal(decode_array(served.data), expected)
    with w.session() as s:
        svc = TaskService(s, w.storage())  # no cache: the stored history, replayed from revision 0
        assert np.array_equal(svc.labels(s.get(Task, task_id)), expected)
        last = s.scalar(select(Revision).where(Revision.task_id == task_id, Revision.number == 6))
        assert last.action == "edit" and last.params["label"] == 12 and last.author_ref == f"link:{task_id}"
        assert last.params == {"tool": "paint", "layer": 0, "points": [[45, 20], [45, 40]], "radius": 2, "label": 12}
        assert last.created_at is not None and last.target is None and last.labels_key is None
        assert last.patch_key is not None and last.patch_bytes is None  # patches as objects (the default)
        assert s.get(Task, task_id).revision == 6


def test_known_task_edits_still_refuse_stale_revoked_and_submitted(known_world):
    w = known_world
    (task_id,), client = w.task_ids, w.client
    token = w.tokens[task_id]
    rev = client.post(f"/api/task/{token}/open").get_json()["revision"]
    for i in range(2):
        rev = int(_paint(client, token, rev, 5 + 8 * i).headers["X-Revision"])

    stale = _paint(client, token, rev - 1, 30)
    assert stale.status_code == 409 and stale.get_json()["revision"] == rev

    # another worker (its own session, no cache here) moves the task on: this worker's knowledge is now old, and an
    # edit based on what it knew is refused by the update itself, then answered 409 by the ordinary path
    with w.session() as s:
        TaskService(s, w.storage()).edit(s.get(Task, task_id), Actor(ref="other"), rev, "paint",
                                         {"layer": 1, "points": [[40, 40]], "radius": 1, "label": 3})
    moved = _paint(client, token, rev, 30)
    assert moved.status_code == 409 and moved.get_json()["revision"] == rev + 1
    # based on the other worker's revision: this worker catches up with its patch, still without the task row
    statements = _statements(w)
    ok = _paint(client, token, rev + 1, 30)
    assert ok.status_code == 200 and int(ok.headers["X-Revision"]) == rev + 2
    assert not any("FROM tasks" in s for s in statements), statements
    rev += 2
    with w.session() as s:
        replayed = TaskService(s, w.storage()).labels(s.get(Task, task_id))
    assert np.array_equal(decode_array(client.get(f"/api/task/{token}/labels").data), replayed)

    with w.session() as s:  # revoke every link of the task
        s.execute(update(Task).where(Task.id == task_id).values(token_nonce=Task.token_nonce + 1))
        s.commit()
    revoked = _paint(client, token, rev, 50)
    assert revoked.status_code == 404
    with w.session() as s:
        s.execute(update(Task).where(Task.id == task_id).values(token_nonce=Task.token_nonce - 1))
        s.commit()

    assert client.post(f"/api/task/{token}/submit", json={"base_revision": rev}).status_code == 200
    after = _paint(client, token, rev, 50)
    assert after.status_code == 409
    assert _numbers(w, task_id) == list(range(rev + 1))


@pytest.fixture(params=["sqlite", "postgres"])
def open_world(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return make_world(tmp_path, database_url=url, n_tasks=1)


def test_open_assigns_and_starts_the_clock_in_one_update_and_records_the_event(open_world):
    from backend.store.models import TaskEvent, TaskState

    w = open_world
    (task_id,), client = w.task_ids, w.client
    token = w.tokens[task_id]
    statements = _statements(w)
    body = client.post(f"/api/task/{token}/open").get_json()
    assert body["state"] == "assigned" and body["project"] == "p"
    updates = [s for s in statements if s.lstrip().startswith("UPDATE")]
    assert len(updates) == 1 and "opened_at" in updates[0], statements
    with w.session() as s:
        task = s.get(Task, task_id)
        assert task.state is TaskState.assigned and task.opened_at is not None and task.assigned_at is not None
        first_open = task.opened_at
        (event_row,) = s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id)).all()
        assert (event_row.action, event_row.from_state, event_row.to_state) == ("assign", "prelabeled", "assigned")
        assert event_row.actor_ref == f"link:{task_id}" and event_row.created_at is not None
    assert client.post(f"/api/task/{token}/open").status_code == 200  # idempotent: the first open's time stands
    with w.session() as s:
        assert s.get(Task, task_id).opened_at == first_open
        assert len(s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id)).all()) == 1

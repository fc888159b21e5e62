"""Racing workflow transitions, on SQLite and PostgreSQL: every state change is a conditional update, so of two
requests that both saw the same task exactly one wins and the other gets a 409-class error; the revision log
never has a gap or a duplicate.

Two ways to race: two database sessions that both loaded the task before either acted (a deterministic
interleaving that a check-then-commit in Python would let both through), and real concurrent HTTP requests
through a threaded server.
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from backend.store.models import Review, Revision, Task, TaskEvent, TaskState, User
from backend.tasks import Actor, StaleRevision, TaskService
from backend.tasks.states import TransitionError

from ..conftest import login, make_world

CROWD = Actor(ref="worker-1")
PAINT = {"layer": 0, "points": [[50, 50]], "radius": 2, "label": 9}


@pytest.fixture(params=["sqlite", "postgres"])
def race_world(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return make_world(tmp_path, database_url=url)


def _two_views(world, task_id):
    """Two services on separate sessions, each holding the task as it was before either acts."""
    views = []
    for _ in range(2):
        session = world.session()
        views.append((TaskService(session, world.storage()), session.get(Task, task_id), session))
    return views


def _reviewer(session) -> Actor:
    return Actor(user=session.scalar(select(User).where(User.username == "rev")))


def _revision_numbers(world, task_id) -> list[int]:
    with world.session() as s:
        return list(s.scalars(select(Revision.number).where(Revision.task_id == task_id).order_by(Revision.number)))


def _state(world, task_id) -> TaskState:
    with world.session() as s:
        return s.get(Task, task_id).state


def _to_review(world, task_id):
    with world.session() as s:
        svc = TaskService(s, world.storage())
        task = s.get(Task, task_id)
        svc.submit(task, CROWD, task.revision)
        svc.start_review(task, _reviewer(s))


def test_submit_then_stale_edit_is_refused(race_world):
    tid = race_world.task_ids[0]
    (a, task_a, _), (b, task_b, _) = _two_views(race_world, tid)
    a.submit(task_a, CROWD, 0)
    # b still believes the task is editable: the conditional update must refuse its edit
    with pytest.raises(TransitionError) as err:
        b.edit(task_b, CROWD, 0, "paint", PAINT)
    assert err.value.state is TaskState.submitted
    assert _revision_numbers(race_world, tid) == [0]
    assert not [k for k in race_world.storage().list("") if f"/tasks/{tid}/patches/" in k]


def test_edit_then_stale_submit_is_refused(race_world):
    tid = race_world.task_ids[0]
    (a, task_a, _), (b, task_b, _) = _two_views(race_world, tid)
    a.edit(task_a, CROWD, 0, "paint", PAINT)
    # the submit names revision 0 but revision 1 landed first: submitting would hide that edit from the reviewer
    with pytest.raises(StaleRevision) as err:
        b.submit(task_b, CROWD, 0)
    assert err.value.current == 1
    assert _state(race_world, tid) is TaskState.assigned
    assert _revision_numbers(race_world, tid) == [0, 1]


def test_double_submit_has_one_winner(race_world):
    tid = race_world.task_ids[0]
    (a, task_a, _), (b, task_b, _) = _two_views(race_world, tid)
    a.submit(task_a, CROWD, 0)
    with pytest.raises(TransitionError):
        b.submit(task_b, CROWD, 0)
    with race_world.session() as s:
        submits = s.scalars(select(TaskEvent).where(TaskEvent.task_id == tid, TaskEvent.action == "submit")).all()
    assert len(submits) == 1


def test_approve_and_reject_race_has_one_verdict(race_world):
    tid = race_world.task_ids[0]
    _to_review(race_world, tid)
    (a, task_a, sa), (b, task_b, sb) = _two_views(race_world, tid)
    a.review(task_a, _reviewer(sa), "approve")
    with pytest.raises(TransitionError) as err:
        b.review(task_b, _reviewer(sb), "reject", "wrong")
    assert err.value.state is TaskState.approved
    with race_world.session() as s:
        reviews = s.scalars(select(Review).where(Review.task_id == tid)).all()
    assert [r.verdict for r in reviews] == ["approved"]
    assert _state(race_world, tid) is TaskState.approved


def test_approved_task_stays_readable_and_refuses_every_write(race_world):
    tid = race_world.task_ids[0]
    token = race_world.tokens[tid]
    c = race_world.client
    first = c.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint", "params": PAINT})
    assert first.status_code == 200
    _to_review(race_world, tid)
    rc = race_world.app.test_client()
    h = {"X-CSRF-Token": login(rc, "rev")}
    assert rc.post(f"/api/review/tasks/{tid}/approve", json={}, headers=h).status_code == 200
    before = _revision_numbers(race_world, tid)
    writes = [
        c.post(f"/api/task/{token}/edit", json={"base_revision": 1, "tool": "paint", "params": PAINT}),
        c.post(f"/api/task/{token}/undo", json={"base_revision": 1}),
        c.post(f"/api/task/{token}/submit", json={"base_revision": 1}),
        rc.post(f"/api/review/tasks/{tid}/edit", json={"base_revision": 1, "tool": "paint", "params": PAINT},
                headers=h),
        rc.post(f"/api/review/tasks/{tid}/reject", json={"comment": "late"}, headers=h),
    ]
    assert [w.status_code for w in writes] == [409] * len(writes), [w.get_json() for w in writes]
    assert all(w.get_json()["state"] == "approved" for w in writes)
    assert _revision_numbers(race_world, tid) == before
    # reading stays possible, and a GET changes nothing
    assert c.get(f"/api/task/{token}").get_json()["state"] == "approved"
    assert c.get(f"/api/task/{token}/labels").status_code == 200
    assert c.post(f"/api/task/{token}/open").get_json()["state"] == "approved"


def test_get_never_changes_state_and_open_is_idempotent(race_world):
    tid = race_world.task_ids[0]
    token = race_world.tokens[tid]
    c = race_world.client
    for path in ("", "/image", "/labels"):
        assert c.get(f"/api/task/{token}{path}").status_code == 200
    assert c.get(f"/task/{token}").status_code == 200
    with race_world.session() as s:
        task = s.get(Task, tid)
        assert task.state is TaskState.prelabeled and task.opened_at is None and task.assigned_at is None
    first = c.post(f"/api/task/{token}/open")
    assert first.status_code == 200 and first.get_json()["state"] == "assigned"
    with race_world.session() as s:
        opened_at = s.get(Task, tid).opened_at
    assert opened_at is not None
    assert c.post(f"/api/task/{token}/open").status_code == 200
    with race_world.session() as s:
        assert s.get(Task, tid).opened_at == opened_at  # the clock keeps its first start
        assigns = s.scalars(select(TaskEvent).where(TaskEvent.task_id == tid, TaskEvent.action == "assign")).all()
    assert len(assigns) == 1


def _serve(world):
    server = make_server("127.0.0.1", 0, world.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def _run_all(server, fn, n):
    """``fn(0)`` .. ``fn(n - 1)`` in ``n`` threads at once, all joined, then ``server`` stopped."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.shutdown()


def _post(url, body, headers=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("X-Revision")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_concurrent_edits_and_submits_over_http(race_world):
    """Edits and submits fired together at the same base revision: one request wins the revision, at most one
    submit wins, every loser gets 409, and the log has no gap or duplicate."""
    tid = race_world.task_ids[0]
    token = race_world.tokens[tid]
    server, base = _serve(race_world)
    n = 8
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def act(i):
        barrier.wait()
        if i % 2:
            results[i] = ("submit", *_post(f"{base}/api/task/{token}/submit", {"base_revision": 0}))
        else:
            params = {"layer": 0, "points": [[50, 5 + 10 * i]], "radius": 2, "label": 20 + i}
            results[i] = ("edit", *_post(f"{base}/api/task/{token}/edit",
                                         {"base_revision": 0, "tool": "paint", "params": params}))

    _run_all(server, act, n)
    codes = [code for _, code, _ in results]
    assert set(codes) <= {200, 409}, results
    assert codes.count(200) == 1, results  # edits and submits all named revision 0: only one can win
    winner = next(kind for kind, code, _ in results if code == 200)
    numbers = _revision_numbers(race_world, tid)
    assert numbers == ([0, 1] if winner == "edit" else [0])
    assert _state(race_world, tid) is (TaskState.assigned if winner == "edit" else TaskState.submitted)


def test_concurrent_verdicts_over_http(race_world):
    tid = race_world.task_ids[0]
    _to_review(race_world, tid)
    server, base = _serve(race_world)
    clients = []
    for _ in range(6):
        rc = race_world.app.test_client()
        csrf = login(rc, "rev")
        cookie = rc.get_cookie("session")
        clients.append({"X-CSRF-Token": csrf, "Cookie": f"session={cookie.value}"})
    barrier = threading.Barrier(len(clients))
    results: list = [None] * len(clients)

    def verdict(i):
        barrier.wait()
        action = "approve" if i % 2 else "reject"
        results[i] = _post(f"{base}/api/review/tasks/{tid}/{action}", {"comment": "no"}, clients[i])[0]

    _run_all(server, verdict, len(clients))
    assert sorted(results) == [200] + [409] * (len(clients) - 1), results
    with race_world.session() as s:
        assert len(s.scalars(select(Review).where(Review.task_id == tid)).all()) == 1
        verdicts = s.scalars(select(TaskEvent).where(TaskEvent.task_id == tid,
                                                     TaskEvent.action.in_(["approve", "reject"]))).all()
    assert len(verdicts) == 1

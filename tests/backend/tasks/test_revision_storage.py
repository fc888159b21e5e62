"""Large tasks store patches with periodic snapshots, and workers keep current labels in memory: whatever a
worker has cached, every revision reads back exactly as the edits made it."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from backend.store import db as dbmod
from backend.tasks import revisions as tasks_mod
from backend.store.arrays import decode_array
from backend.store.cache import ArrayCache
from backend.edits import apply_edit
from backend.store.models import Revision

from ..conftest import make_world


@pytest.fixture
def big(tmp_path, monkeypatch):
    # Make the 64x96 test tasks count as "large": snapshots only every 4th revision.
    monkeypatch.setattr(tasks_mod, "SNAPSHOT_ALWAYS_PIXELS", 0)
    monkeypatch.setattr(tasks_mod, "SNAPSHOT_EVERY", 4)
    return make_world(tmp_path, n_tasks=1)


def _paint(y, x, label):
    return {"tool": "paint", "params": {"layer": 0, "points": [[y, x]], "radius": 3, "label": label,
                                        "overwrite": True}}


def _revisions(world, tid):
    with world.session() as s:
        return [(r.number, r.action, r.labels_key is not None, r.patch_key is not None)
                for r in s.scalars(select(Revision).where(Revision.task_id == tid).order_by(Revision.number))]


def _get_labels(client, token):
    resp = client.get(f"/api/task/{token}/labels")
    assert resp.status_code == 200
    return decode_array(resp.data), int(resp.headers["X-Revision"])


def _cold(world):
    """Another worker: same database and storage, nothing in memory."""
    world.app.extensions["cellloop.cache"] = ArrayCache(64 << 20)


def test_patch_only_revisions_replay_exactly_with_and_without_cache(big):
    tid = big.task_ids[0]
    token = big.tokens[tid]
    expected = {0: big.labels.copy()}
    current = big.labels.copy()
    rev = 0
    for i in range(9):
        edit = _paint(10 + 5 * i, 10 + 8 * i, 20 + i)
        patch = apply_edit(current, big.image, edit["tool"], edit["params"])
        patch.apply(current)
        if i % 3 == 2:
            _cold(big)  # some edits land on a worker that has never seen the task
        resp = big.client.post(f"/api/task/{token}/edit", json={"base_revision": rev, **edit})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        rev = int(resp.headers["X-Revision"])
        expected[rev] = current.copy()
    for _ in range(3):
        resp = big.client.post(f"/api/task/{token}/undo", json={"base_revision": rev})
        assert resp.status_code == 200
        rev = int(resp.headers["X-Revision"])
    resp = big.client.post(f"/api/task/{token}/redo", json={"base_revision": rev})
    assert resp.status_code == 200
    rev = int(resp.headers["X-Revision"])
    assert rev == 13

    # Snapshots at creation and every 4th revision; every other revision holds only its patch.
    revs = _revisions(big, tid)
    assert [n for n, _, snap, _ in revs if snap] == [0, 4, 8, 12]
    assert all(has_patch for n, _, _, has_patch in revs if n > 0)

    warm, _ = _get_labels(big.client, token)
    _cold(big)
    cold, got_rev = _get_labels(big.client, token)
    # after 9 paints, 3 undos and 1 redo: the state right after the 7th paint
    assert got_rev == 13
    np.testing.assert_array_equal(warm, expected[7])
    np.testing.assert_array_equal(cold, expected[7])

    # Every past revision rebuilds from its snapshot plus patches to what it was.
    with big.session() as s:
        svc = tasks_mod.RevisionStore(s, big.storage())
        task = s.get(tasks_mod.Task, tid)
        for number in range(0, 10):
            got = svc._rebuild(task, svc._revision(task, number))
            np.testing.assert_array_equal(got, expected[number], err_msg=f"revision {number}")


def test_a_stale_worker_cache_cannot_serve_old_labels(big):
    tid = big.task_ids[0]
    token = big.tokens[tid]
    worker_a = big.app.extensions["cellloop.cache"]
    assert big.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, **_paint(10, 10, 5)}).status_code == 200
    # worker B (its own cache) makes revision 2; worker A still holds revision 1 in memory
    worker_b = ArrayCache(64 << 20)
    big.app.extensions["cellloop.cache"] = worker_b
    assert big.client.post(f"/api/task/{token}/edit", json={"base_revision": 1, **_paint(40, 60, 6)}).status_code == 200
    big.app.extensions["cellloop.cache"] = worker_a
    labels, rev = _get_labels(big.client, token)
    assert rev == 2 and labels[40, 60, 0] == 6 and labels[10, 10, 0] == 5
    # A's edit on top of revision 2 keeps B's change.
    resp = big.client.post(f"/api/task/{token}/edit", json={"base_revision": 2, **_paint(30, 30, 7)})
    assert resp.status_code == 200
    labels, rev = _get_labels(big.client, token)
    assert rev == 3 and labels[40, 60, 0] == 6 and labels[30, 30, 0] == 7


def test_a_lost_race_leaves_no_half_edited_labels_in_memory(big):
    tid = big.task_ids[0]
    token = big.tokens[tid]
    assert big.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, **_paint(10, 10, 5)}).status_code == 200
    # stale base: refused before anything is taken from the cache or written
    resp = big.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, **_paint(50, 50, 9)})
    assert resp.status_code == 409
    labels, rev = _get_labels(big.client, token)
    assert rev == 1 and labels[50, 50, 0] != 9
    # a bad edit (400) does not lose the cached labels either
    cache = big.app.extensions["cellloop.cache"]
    before = len(cache)
    resp = big.client.post(f"/api/task/{token}/edit", json={"base_revision": 1, "tool": "paint",
                                                            "params": {"layer": 0, "points": [[500, 5]], "radius": 2,
                                                                       "label": 3}})
    assert resp.status_code == 400
    assert len(cache) == before


def test_a_broken_patch_chain_is_a_server_error_that_changes_nothing(big):
    tid = big.task_ids[0]
    token = big.tokens[tid]
    rev = 0
    for i in range(2):
        resp = big.client.post(f"/api/task/{token}/edit", json={"base_revision": rev, **_paint(10 + 20 * i, 10, 5 + i)})
        rev = int(resp.headers["X-Revision"])
    storage = big.storage()
    patch_key = next(k for k in storage.list("") if "/patches/000001-" in k)
    storage.delete(patch_key)
    keys = storage.list("")
    _cold(big)
    resp = big.client.post(f"/api/task/{token}/edit", json={"base_revision": rev, **_paint(50, 50, 9)})
    assert resp.status_code == 500 and "history" in resp.get_json()["error"]
    assert storage.list("") == keys
    assert _revisions(big, tid)[-1][0] == 2


def test_small_tasks_keep_a_snapshot_per_revision(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks_mod, "SNAPSHOT_ALWAYS_PIXELS", 1024 * 1024)
    world = make_world(tmp_path, n_tasks=1)
    tid = world.task_ids[0]
    token = world.tokens[tid]
    assert world.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, **_paint(10, 10, 5)}).status_code == 200
    assert [snap for _, _, snap, _ in _revisions(world, tid)] == [True, True]


def test_a_worker_behind_catches_up_with_patches_not_snapshots(big):
    """Two workers take turns on one task: each brings its cached copy forward with the other's patches, never
    rereading a snapshot, and both always serve exactly the labels the edits made."""
    from backend.web.app import create_app

    tid = big.task_ids[0]
    token = big.tokens[tid]
    other = create_app(big.config)
    other.config["TESTING"] = True
    workers = [big.client, other.test_client()]
    reads: list[str] = []
    for app in (big.app, other):
        storage = app.extensions["cellloop.storage"]
        real_get = storage.get
        storage.get = lambda key, real_get=real_get: reads.append(key) or real_get(key)
    expected = big.labels.copy()
    revision = 0
    for i in range(12):
        client = workers[i % 2]
        edit = _paint(5 + 4 * i, 10 + 6 * i, 20 + i)
        if i >= 2:
            reads.clear()
        resp = client.post(f"/api/task/{token}/edit", json={"base_revision": revision, **edit})
        assert resp.status_code == 200, resp.get_json()
        revision = int(resp.headers["X-Revision"])
        patch = apply_edit(expected, big.image, edit["tool"], edit["params"])
        patch.apply(expected)
        if i >= 2:
            # warm workers read only the one patch they missed
            assert [k for k in reads if "/labels/" in k] == [] and len(reads) == 1, reads
    for client in workers:
        labels, rev = _get_labels(client, token)
        assert rev == revision
        np.testing.assert_array_equal(labels, expected)


def test_cache_is_an_lru_bounded_by_bytes():
    cache = ArrayCache(max_bytes=1000)
    a, b, c = (np.zeros(100, np.int32) for _ in range(3))  # 400 bytes each
    cache.put(("s", "a"), a)
    cache.put(("s", "b"), b)
    assert cache.get(("s", "a")) is a  # a is now the most recently used
    cache.put(("s", "c"), c)
    assert cache.get(("s", "b")) is None and cache.get(("s", "a")) is a and cache.nbytes == 800
    assert cache.take(("s", "a")) is a and cache.get(("s", "a")) is None and cache.nbytes == 400
    cache.put(("s", "huge"), np.zeros(1000, np.int32))  # larger than the whole cache: not kept
    assert cache.get(("s", "huge")) is None and cache.get(("s", "c")) is c
    cache.put(("s", "pair"), (np.zeros(50, np.int32), None))
    assert cache.nbytes == 600


def test_downgrade_refuses_to_drop_patch_only_revisions(big):
    tid = big.task_ids[0]
    token = big.tokens[tid]
    assert big.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, **_paint(10, 10, 5)}).status_code == 200
    big.app.extensions["cellloop.engine"].dispose()
    with pytest.raises(RuntimeError, match="store only a patch"):
        dbmod.downgrade(big.config.database_url, "0001")
    assert dbmod.current_revision(big.config.database_url) == "0002"

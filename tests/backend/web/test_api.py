"""The task API end to end through Flask's test client: crowd links, edits, undo/redo, review, access rules."""
from __future__ import annotations

import numpy as np
import pytest

from backend.store.arrays import decode_array, encode_array
from backend.store.cache import ArrayCache
from backend.edits import Patch

from ..conftest import login


def _labels(world, token):
    resp = world.client.get(f"/api/task/{token}/labels")
    assert resp.status_code == 200
    return decode_array(resp.data), int(resp.headers["X-Revision"])


def _stored_keys(world):
    return world.storage().list("")


def test_task_link_serves_page_image_and_labels(world):
    tid = world.task_ids[0]
    token = world.tokens[tid]
    page = world.client.get(f"/task/{token}")
    assert page.status_code == 200 and b"<canvas" in page.data
    info = world.client.get(f"/api/task/{token}").get_json()
    assert info["id"] == tid
    assert info["shape"] == [64, 96] and info["channels"] == ["dna", "mem", "cd45"]
    assert info["state"] == "prelabeled"  # reading never assigns: a link prefetcher must not start the clock
    opened = world.client.post(f"/api/task/{token}/open")
    assert opened.status_code == 200 and opened.get_json()["state"] == "assigned"
    image = decode_array(world.client.get(f"/api/task/{token}/image").data)
    np.testing.assert_array_equal(image, world.image)
    labels, revision = _labels(world, token)
    np.testing.assert_array_equal(labels, world.labels)
    assert revision == 0


def test_edit_undo_redo_round_trip(world):
    token = world.tokens[world.task_ids[0]]
    resp = world.client.post(f"/api/task/{token}/edit", json={
        "base_revision": 0, "tool": "paint",
        "params": {"layer": 0, "points": [[50, 10], [50, 20]], "radius": 2, "label": 7}})
    assert resp.status_code == 200, resp.get_json()
    assert resp.mimetype == "application/x-cellloop-patch"
    assert int(resp.headers["X-Revision"]) == 1
    patch = Patch.from_bytes(resp.data)
    # only the touched area travels back, not the whole label image
    assert patch.before.size < 64 * 96 / 10
    expected = world.labels.copy()
    patch.apply(expected)
    after, rev = _labels(world, token)
    assert rev == 1
    np.testing.assert_array_equal(after, expected)
    assert (after[50, 10:21, 0] == 7).all()

    undo = world.client.post(f"/api/task/{token}/undo", json={"base_revision": 1})
    assert undo.status_code == 200 and int(undo.headers["X-Revision"]) == 2
    np.testing.assert_array_equal(_labels(world, token)[0], world.labels)
    redo = world.client.post(f"/api/task/{token}/redo", json={"base_revision": 2})
    assert redo.status_code == 200 and int(redo.headers["X-Revision"]) == 3
    np.testing.assert_array_equal(_labels(world, token)[0], expected)
    # redo stack is empty now
    again = world.client.post(f"/api/task/{token}/redo", json={"base_revision": 3})
    assert again.status_code == 409
    info = world.client.get(f"/api/task/{token}").get_json()
    assert info["revision"] == 3 and info["can_undo"] and not info["can_redo"]


def test_stale_revision_is_409_and_changes_nothing(world):
    token = world.tokens[world.task_ids[0]]
    body = {"tool": "paint", "params": {"layer": 0, "points": [[55, 80]], "radius": 3, "label": 9}}
    assert world.client.post(f"/api/task/{token}/edit", json={**body, "base_revision": 0}).status_code == 200
    keys = _stored_keys(world)
    before, _ = _labels(world, token)
    stale = world.client.post(f"/api/task/{token}/edit", json={**body, "base_revision": 0,
                                                               "params": {**body["params"], "points": [[5, 80]]}})
    assert stale.status_code == 409
    assert stale.get_json()["revision"] == 1
    assert _stored_keys(world) == keys
    np.testing.assert_array_equal(_labels(world, token)[0], before)
    missing = world.client.post(f"/api/task/{token}/edit", json=body)
    assert missing.status_code == 400 and "base_revision" in missing.get_json()["error"]


@pytest.mark.parametrize("body", [
    {"tool": "paint", "params": {"layer": 0, "points": [[5, 5]], "radius": 0, "label": 3}},
    {"tool": "paint", "params": {"layer": 0, "points": [[5, 500]], "radius": 2, "label": 3}},
    {"tool": "paint", "params": {"layer": 5, "points": [[5, 5]], "radius": 2, "label": 3}},
    {"tool": "paint", "params": {"layer": 0, "points": [[5, 5]], "radius": 2, "label": -4}},
    {"tool": "nuke", "params": {}},
    {"tool": "paint", "params": "not a dict"},
])
def test_bad_edit_parameters_are_400_and_store_nothing(world, body):
    token = world.tokens[world.task_ids[0]]
    keys = _stored_keys(world)
    resp = world.client.post(f"/api/task/{token}/edit", json={**body, "base_revision": 0})
    assert resp.status_code == 400
    assert resp.get_json()["error"]
    assert _stored_keys(world) == keys
    labels, revision = _labels(world, token)
    assert revision == 0
    np.testing.assert_array_equal(labels, world.labels)


def test_non_json_body_is_400(world):
    token = world.tokens[world.task_ids[0]]
    resp = world.client.post(f"/api/task/{token}/edit", data=b"\x00garbage", content_type="application/json")
    assert resp.status_code == 400


def test_token_grants_one_task_only(world):
    a, b = world.task_ids
    token_a = world.tokens[a]
    assert world.client.get(f"/api/task/{token_a}").get_json()["id"] == a
    # a token is bound to its task: tampering with it or its payload gives 404 without naming any task
    forged = token_a[:-2] + ("AA" if not token_a.endswith("AA") else "BB")
    for bad in (forged, "not-a-token", token_a + "x"):
        resp = world.client.get(f"/api/task/{bad}")
        assert resp.status_code == 404
        assert str(b) not in resp.get_data(as_text=True) and "revision" not in resp.get_json()
    # a token signed with another key (another deployment) is refused as well
    from itsdangerous import URLSafeTimedSerializer

    foreign = URLSafeTimedSerializer("other-secret", salt="cellloop.task").dumps({"t": b, "n": 0})
    assert world.client.get(f"/api/task/{foreign}").status_code == 404
    # editing B with A's token only ever touches A
    world.client.post(f"/api/task/{token_a}/edit", json={"base_revision": 0, "tool": "paint",
                      "params": {"layer": 0, "points": [[60, 90]], "radius": 2, "label": 4}})
    labels_b, rev_b = _labels(world, world.tokens[b])
    assert rev_b == 0
    np.testing.assert_array_equal(labels_b, world.labels)


def test_revoked_and_expired_links(world):
    a = world.task_ids[0]
    boss_csrf = login(world.client, "boss")
    resp = world.client.post(f"/api/review/tasks/{a}/link", json={"revoke": True, "worker": "W42"},
                             headers={"X-CSRF-Token": boss_csrf})
    assert resp.status_code == 200
    new_token = resp.get_json()["token"]
    assert world.client.get(f"/api/task/{world.tokens[a]}").status_code == 404  # old link revoked
    anon = world.app.test_client()
    assert anon.get(f"/api/task/{new_token}").status_code == 200
    world.app.config["CELLLOOP"].token_max_age_s = -1
    resp = anon.get(f"/api/task/{new_token}")
    assert resp.status_code == 403 and "expired" in resp.get_json()["error"]


def test_roles_and_csrf(world):
    c = world.client
    assert c.get("/api/review/tasks").status_code == 401
    login(c, "ann")
    assert c.get("/api/review/tasks").status_code == 403
    c2 = world.app.test_client()
    csrf = login(c2, "rev")
    assert c2.get("/api/review/tasks").status_code == 200
    tid = world.task_ids[0]
    # cookie-authenticated change without the CSRF header is refused
    assert c2.post(f"/api/review/tasks/{tid}/start", json={}).status_code == 403
    assert c2.post(f"/api/review/tasks/{tid}/start", json={}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    # reviewers are not admins
    assert c2.post(f"/api/review/tasks/{tid}/link", json={}, headers={"X-CSRF-Token": csrf}).status_code == 403
    # bad password, unknown user: same answer
    c3 = world.app.test_client()
    tok = c3.get("/api/auth/me").get_json()["csrf_token"]
    for user, pw in (("rev", "nope-nope-nope"), ("ghost", "whatever-123")):
        r = c3.post("/api/auth/login", json={"username": user, "password": pw}, headers={"X-CSRF-Token": tok})
        assert r.status_code == 401
    # login itself needs the CSRF token
    assert c3.post("/api/auth/login", json={"username": "rev", "password": "x"}).status_code == 403


def test_session_cookie_flags(world):
    c = world.client
    login(c, "rev")
    cookie = c.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


def test_review_workflow_and_audit(world):
    tid = world.task_ids[0]
    token = world.tokens[tid]
    c = world.client
    rev_client = world.app.test_client()
    csrf = login(rev_client, "rev")
    h = {"X-CSRF-Token": csrf}
    # approving a task nobody submitted is a bad transition
    bad = rev_client.post(f"/api/review/tasks/{tid}/approve", json={}, headers=h)
    assert bad.status_code == 409 and bad.get_json()["state"] in ("prelabeled", "assigned")
    c.post(f"/api/task/{token}/open")
    c.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint",
           "params": {"layer": 0, "points": [[50, 50]], "radius": 2, "label": 5}})
    stale_submit = c.post(f"/api/task/{token}/submit", json={"base_revision": 0})
    assert stale_submit.status_code == 409
    sub = c.post(f"/api/task/{token}/submit", json={"base_revision": 1})
    assert sub.status_code == 200 and sub.get_json()["state"] == "submitted"
    # the annotator can no longer edit a submitted task
    locked = c.post(f"/api/task/{token}/edit", json={"base_revision": 1, "tool": "paint",
                    "params": {"layer": 0, "points": [[5, 50]], "radius": 2, "label": 5}})
    assert locked.status_code == 409 and locked.get_json()["state"] == "submitted"
    queue = rev_client.get("/api/review/tasks").get_json()["tasks"]
    assert [t["id"] for t in queue] == [tid]
    assert rev_client.post(f"/api/review/tasks/{tid}/start", json={}, headers=h).get_json()["state"] == "in_review"
    # the reviewer may edit while reviewing
    edit = rev_client.post(f"/api/review/tasks/{tid}/edit", headers=h, json={
        "base_revision": 1, "tool": "erase", "params": {"layer": 0, "points": [[50, 50]], "radius": 1}})
    assert edit.status_code == 200 and int(edit.headers["X-Revision"]) == 2
    no_comment = rev_client.post(f"/api/review/tasks/{tid}/reject", json={"comment": "  "}, headers=h)
    assert no_comment.status_code == 400
    rej = rev_client.post(f"/api/review/tasks/{tid}/reject", json={"comment": "cell 2 is two cells"}, headers=h)
    assert rej.status_code == 200 and rej.get_json()["state"] == "rejected"
    assert c.get(f"/api/task/{token}").get_json()["state"] == "rejected"
    back = c.post(f"/api/task/{token}/open").get_json()
    assert back["state"] == "assigned"
    assert back["review"] == {"verdict": "rejected", "comment": "cell 2 is two cells"}
    assert c.post(f"/api/task/{token}/submit", json={"base_revision": 2}).status_code == 200
    ok = rev_client.post(f"/api/review/tasks/{tid}/approve", json={}, headers=h)
    assert ok.status_code == 200 and ok.get_json()["state"] == "approved"

    from sqlalchemy import select

    from backend.store.models import Revision, TaskEvent

    s = world.session()
    events = s.scalars(select(TaskEvent).where(TaskEvent.task_id == tid).order_by(TaskEvent.id)).all()
    assert [(e.action, e.to_state) for e in events] == [
        ("assign", "assigned"), ("submit", "submitted"), ("start_review", "in_review"), ("reject", "rejected"),
        ("assign", "assigned"), ("submit", "submitted"), ("start_review", "in_review"), ("approve", "approved")]
    submits = [e for e in events if e.action == "submit"]
    assert all(e.time_open_s is not None and e.time_open_s >= 0 for e in submits)
    assert events[3].detail == {"comment": "cell 2 is two cells"} and events[3].actor_id is not None
    revs = s.scalars(select(Revision).where(Revision.task_id == tid).order_by(Revision.number)).all()
    assert [(r.number, r.action) for r in revs] == [(0, "init"), (1, "edit"), (2, "edit")]
    assert revs[1].author_ref and revs[2].author_id is not None and revs[1].params["tool"] == "paint"


def test_reviewer_label_upload_validates_before_storing(world):
    tid = world.task_ids[0]
    token = world.tokens[tid]
    world.client.post(f"/api/task/{token}/submit", json={"base_revision": 0})
    rc = world.app.test_client()
    h = {"X-CSRF-Token": login(rc, "rev")}
    rc.post(f"/api/review/tasks/{tid}/start", json={}, headers=h)
    keys = _stored_keys(world)
    url = f"/api/review/tasks/{tid}/labels?base_revision=0"
    bad_bodies = [
        encode_array(np.zeros((64, 96), np.int32)),              # wrong dims
        encode_array(np.zeros((32, 96, 2), np.int32)),           # wrong shape
        encode_array(np.zeros((64, 96, 2), np.float32)),         # wrong dtype
        encode_array(-np.ones((64, 96, 2), np.int32)),           # negative ids
        encode_array(np.zeros((64, 96, 2), np.int32))[:40],      # truncated
        b"PK\x03\x04 not an array",                              # garbage
    ]
    for body in bad_bodies:
        resp = rc.put(url, data=body, headers=h)
        assert resp.status_code == 400, resp.get_json()
        assert resp.get_json()["error"]
    assert _stored_keys(world) == keys
    new = np.zeros((64, 96, 2), np.uint16)
    new[1:5, 1:5] = 3
    resp = rc.put(url, data=encode_array(new), headers=h)
    assert resp.status_code == 200 and resp.get_json()["revision"] == 1
    got = decode_array(rc.get(f"/api/review/tasks/{tid}/labels").data)
    np.testing.assert_array_equal(got, new.astype(np.int32))
    assert rc.put(url, data=encode_array(new), headers=h).status_code == 409  # base 0 is stale now


def test_unknown_review_task_is_404(world):
    rc = world.app.test_client()
    login(rc, "rev")
    assert rc.get("/api/review/tasks/99999").status_code == 404


def test_undo_of_tampered_history_is_500_and_changes_nothing(world):
    token = world.tokens[world.task_ids[0]]
    world.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint",
                      "params": {"layer": 0, "points": [[50, 80]], "radius": 2, "label": 8}})
    # someone rewrote the stored labels behind the server's back (the last snapshot an undo would rebuild from)
    storage = world.storage()
    key = max(k for k in storage.list("") if f"/tasks/{world.task_ids[0]}/labels/" in k)
    labels = decode_array(storage.get(key))
    labels[48:53, 78:83, 0] = 3
    storage.put(key, encode_array(labels))
    keys = _stored_keys(world)
    # a worker that has the labels in memory never rereads them; a fresh one (empty cache) does
    world.app.extensions["cellloop.cache"] = ArrayCache(64 << 20)
    resp = world.client.post(f"/api/task/{token}/undo", json={"base_revision": 1})
    assert resp.status_code == 500 and "history" in resp.get_json()["error"]
    assert _stored_keys(world) == keys
    assert world.client.get(f"/api/task/{token}").get_json()["revision"] == 1

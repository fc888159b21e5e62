"""What the browser editor needs from the web layer: who may frame a task page, where its "submitted" message
goes, the crowd worker's id recorded with each edit, and the reviewer queue's filters."""
from __future__ import annotations

import pytest

from backend.config import Config
from backend.store.models import Revision
from ..conftest import login

PARENT = "https://crowd.example.org"


def test_task_page_may_be_framed_only_by_configured_origins(world, monkeypatch):
    token = world.tokens[world.task_ids[0]]
    csp = world.client.get(f"/task/{token}").headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and PARENT not in csp
    world.config.frame_ancestors = (PARENT, "http://127.0.0.1:9000")
    csp = world.client.get(f"/task/{token}").headers["Content-Security-Policy"]
    assert csp.endswith(f"frame-ancestors 'self' {PARENT} http://127.0.0.1:9000")
    # the reviewer's page is never framable
    assert world.client.get("/").headers["Content-Security-Policy"].endswith("frame-ancestors 'none'")


def test_parent_origin_is_the_configured_one_never_a_wildcard(world):
    # the editor learns it when it opens the task
    token = world.tokens[world.task_ids[0]]

    def parent():
        resp = world.client.post(f"/api/task/{token}/open", json={})
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()["parent_origin"]

    assert parent() is None
    world.config.frame_ancestors = (PARENT, "http://127.0.0.1:9000")
    assert parent() == PARENT
    world.config.parent_origin = "http://127.0.0.1:9000"
    assert parent() == "http://127.0.0.1:9000"


@pytest.mark.parametrize("value", ["*", "https://ok.org; script-src *", "crowd.example.org", "https://a.org/path"])
def test_a_bad_frame_ancestor_stops_the_server_from_starting(tmp_path, monkeypatch, value):
    monkeypatch.setenv("CELLLOOP_FRAME_ANCESTORS", f"{PARENT} {value}")
    with pytest.raises(ValueError, match="CELLLOOP_FRAME_ANCESTORS: not an origin"):
        Config.from_env(instance_dir=tmp_path, secret_key="a-long-enough-secret-key-for-tests")


def test_env_origins_are_read(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_FRAME_ANCESTORS", f"{PARENT}  http://[::1]:8080")
    monkeypatch.setenv("CELLLOOP_PARENT_ORIGIN", "http://[::1]:8080")
    config = Config.from_env(instance_dir=tmp_path, secret_key="a-long-enough-secret-key-for-tests")
    assert config.frame_ancestors == (PARENT, "http://[::1]:8080")
    assert config.parent_origin == "http://[::1]:8080"


def test_worker_id_from_the_link_is_recorded_with_each_edit(world):
    task_id = world.task_ids[0]
    token = world.tokens[task_id]
    resp = world.client.post(f"/api/task/{token}/edit?worker=A1b2-c3", json={
        "base_revision": 0, "tool": "paint", "params": {"points": [[40, 40]], "radius": 2, "label": 9}})
    assert resp.status_code == 200
    bad = world.client.post(f"/api/task/{token}/edit?worker=<script>", json={
        "base_revision": 1, "tool": "paint", "params": {"points": [[40, 40]], "radius": 2, "label": 9}})
    assert bad.status_code == 400 and "worker" in bad.get_json()["error"]
    with world.session() as db:
        revs = db.query(Revision).filter_by(task_id=task_id).order_by(Revision.number).all()
        assert [r.author_ref for r in revs[1:]] == ["worker:A1b2-c3"]


def test_review_queue_filters_by_project_and_state(world):
    for task_id in world.task_ids:
        token = world.tokens[task_id]
        assert world.client.post(f"/api/task/{token}/submit", json={"base_revision": 0}).status_code == 200
    login(world.client, "rev")
    body = world.client.get("/api/review/tasks?project=p").get_json()
    assert {t["id"] for t in body["tasks"]} == set(world.task_ids) and body["projects"] == ["p"]
    assert all({"revision", "time_open_s", "state"} <= set(t) for t in body["tasks"])
    assert world.client.get("/api/review/tasks?project=other").get_json()["tasks"] == []
    assert world.client.get("/api/review/tasks?state=approved").get_json()["tasks"] == []
    assert world.client.get("/api/review/tasks?state=bogus").status_code == 400

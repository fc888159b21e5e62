"""What one request may cost: body caps per route (checked before reading), caps on one edit, only known
parameters stored, label uploads checked from their header before inflating, and in-process rate limits."""
from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from sqlalchemy import select

from backend.web import request_limits as limits
from backend.store.arrays import encode_array
from backend.store.models import Revision

from ..conftest import PASSWORD, login, make_world


def _edit(world, params, tool="paint", base=0, token=None):
    token = token or world.tokens[world.task_ids[0]]
    return world.client.post(f"/api/task/{token}/edit", json={"base_revision": base, "tool": tool, "params": params})


def _revisions(world):
    with world.session() as s:
        return s.scalars(select(Revision).where(Revision.task_id == world.task_ids[0])
                         .order_by(Revision.number)).all()


def test_json_body_over_the_route_cap_is_refused_before_reading(world):
    token = world.tokens[world.task_ids[0]]
    big = b'{"base_revision": 0, "pad": "' + b"x" * (limits.JSON_BODY_BYTES + 10) + b'"}'
    resp = world.client.post(f"/api/task/{token}/submit", data=big, content_type="application/json")
    assert resp.status_code == 413 and "limit" in resp.get_json()["error"]
    # an edit may be larger (a long stroke), but not without bound
    huge = b"[" * (limits.EDIT_BODY_BYTES + 1)
    resp = world.client.post(f"/api/task/{token}/edit", data=huge, content_type="application/json")
    assert resp.status_code == 413
    assert len(_revisions(world)) == 1


def test_stroke_caps(world):
    # the most the editor sends in one request passes: 2,000 points
    ok = _edit(world, {"layer": 0, "points": [[30 + (i % 3), 10 + (i % 50)] for i in range(2000)],
                       "radius": 1, "label": 7})
    assert ok.status_code == 200, ok.get_json()
    too_many = _edit(world, {"layer": 0, "points": [[30, 30]] * (limits.MAX_STROKE_POINTS + 1), "radius": 1,
                             "label": 7}, base=1)
    assert too_many.status_code == 413 and "at most 5000" in too_many.get_json()["error"]
    # 5,000 points zig-zagging across the task: within the point cap, far over the length cap
    zigzag = [[0, 0] if i % 2 else [63, 95] for i in range(limits.MAX_STROKE_POINTS)]
    long = _edit(world, {"layer": 0, "points": zigzag, "radius": 1, "label": 7}, base=1)
    assert long.status_code == 413 and "px long" in long.get_json()["error"]
    assert len(_revisions(world)) == 2


def test_brush_work_cap_on_a_large_task():
    # 5,000 dense points with the largest brush: ~200 M brush pixels, seconds of work; 2,000 pass
    shape = (2048, 2048)
    dense = [[1000 + (i % 2), 100 + (i % 1800)] for i in range(5000)]
    with pytest.raises(limits.TooLarge, match="brush pixels"):
        limits.check_edit("paint", {"points": dense, "radius": 100, "label": 1}, shape)
    kept = limits.check_edit("paint", {"points": dense[:2000], "radius": 100, "label": 1}, shape)
    assert len(kept["points"]) == 2000
    # a threshold box over a whole 2048² task passes; one over a 4096² task does not
    assert limits.check_edit("threshold", {"box": [0, 0, 2048, 2048], "channel": 0}, shape)
    with pytest.raises(limits.TooLarge, match="box covers"):
        limits.check_edit("threshold", {"box": [0, 0, 4096, 4096], "channel": 0}, (4096, 4096))
    with pytest.raises(limits.TooLarge, match="seeds"):
        limits.check_edit("split", {"seeds": [[i, i] for i in range(limits.MAX_SPLIT_SEEDS + 1)]}, shape)


@pytest.mark.parametrize("points", [
    [[2**70, 5]], [[5, -2**40]], [[float("nan"), 5]], [[1e300, 5]], [["5", 5]], [[5]], "no", [[True, 5]],
])
def test_malformed_points_are_a_clear_400(world, points):
    resp = _edit(world, {"layer": 0, "points": points, "radius": 2, "label": 3})
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"]


def test_only_known_parameters_reach_the_revision_log(world):
    resp = _edit(world, {"layer": 0, "points": [[40, 40]], "radius": 2, "label": 7,
                         "note": "x" * 1000, "__proto__": {"a": 1}})
    assert resp.status_code == 200
    rev = _revisions(world)[-1]
    assert rev.params == {"tool": "paint", "layer": 0, "points": [[40, 40]], "radius": 2, "label": 7}


def _npy_gzip_header_only(shape, dtype="<i4") -> bytes:
    """A gzip .npy whose header claims ``shape`` but whose payload is tiny: inflating it would fail late."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1,), dtype))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return gzip.compress(buf.getvalue() + b"\0" * 64)


def test_label_upload_checked_against_the_task_before_inflating(world):
    tid = world.task_ids[0]
    rc = world.app.test_client()
    h = {"X-CSRF-Token": login(rc, "rev")}
    url = f"/api/review/tasks/{tid}/labels?base_revision=0"
    for shape in [(0, 2**31, 2), (64, 96, 3), (96, 64, 2), (2**20, 2**20, 2)]:
        resp = rc.put(url, data=_npy_gzip_header_only(shape), headers=h)
        assert resp.status_code == 400, (shape, resp.get_json())
        assert "expected shape (64, 96, 2)" in resp.get_json()["error"]
    # a body bigger than any (64, 96, 2) label array could be is refused from its length alone
    cap = limits.label_upload_limit((64, 96))
    resp = rc.put(url, data=b"\x1f\x8b" + b"\0" * cap, headers=h)
    assert resp.status_code == 413
    assert len(_revisions(world)) == 1


def test_huge_and_odd_values_in_ids_and_headers_are_4xx(world):
    rc = world.app.test_client()
    h = {"X-CSRF-Token": login(rc, "rev")}
    world.app.config["TESTING"] = False  # a 500 must show as a 500
    assert rc.get(f"/api/review/tasks/{2**70}").status_code == 404
    assert rc.post(f"/api/review/tasks/{2**64}/approve", json={}, headers=h).status_code == 404
    # a non-ASCII CSRF header is a wrong CSRF token, not a crash
    bad = rc.post(f"/api/review/tasks/{world.task_ids[0]}/start", json={},
                  headers={"X-CSRF-Token": "caf\u00e9-\u2603".encode().decode("latin-1")})
    assert bad.status_code == 403
    token = world.tokens[world.task_ids[0]]
    assert world.client.post(f"/api/task/{token}/submit", json={"base_revision": 2**80}).status_code == 409
    assert world.client.post(f"/api/task/{token}/submit", data=b'{"base_revision": 1e999}',
                             content_type="application/json").status_code == 400


def test_edit_rate_limit_per_link(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_RATELIMIT_LINK_WRITES", "3 per minute")
    world = make_world(tmp_path)
    a, b = (world.tokens[t] for t in world.task_ids)
    codes = [world.client.post(f"/api/task/{a}/undo", json={"base_revision": 0}).status_code for _ in range(4)]
    assert codes == [409, 409, 409, 429]
    limited = world.client.post(f"/api/task/{a}/undo", json={"base_revision": 0})
    assert limited.status_code == 429 and limited.get_json()["error"] and limited.headers.get("Retry-After")
    # another link has its own budget
    assert world.client.post(f"/api/task/{b}/undo", json={"base_revision": 0}).status_code == 409


def test_login_limits_count_failures_per_username_before_hashing(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_RATELIMIT_LOGIN_USER", "3 per minute; 10 per hour")
    world = make_world(tmp_path)
    import backend.web.session as routes

    hashed = []
    real_verify = routes.verify_password
    monkeypatch.setattr(routes, "verify_password", lambda u, p: hashed.append(p) or real_verify(u, p))
    c = world.client
    csrf = c.get("/api/auth/me").get_json()["csrf_token"]

    def attempt(user, password):
        return c.post("/api/auth/login", json={"username": user, "password": password},
                      headers={"X-CSRF-Token": csrf}).status_code

    assert [attempt("rev", f"guess{i}") for i in range(3)] == [401] * 3
    # the fourth guess is refused before its password is hashed, even with the right password
    assert attempt("rev", PASSWORD) == 429
    assert len(hashed) == 3
    # another username is not locked out by these failures
    assert attempt("boss", PASSWORD) == 200


def test_login_limit_per_client_address(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_RATELIMIT_LOGIN_IP", "4 per minute")
    world = make_world(tmp_path)
    c = world.client
    csrf = c.get("/api/auth/me").get_json()["csrf_token"]
    codes = [c.post("/api/auth/login", json={"username": f"u{i}", "password": "x" * 8},
                    headers={"X-CSRF-Token": csrf}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 401, 429]
    other = world.app.test_client()
    csrf2 = other.get("/api/auth/me", environ_base={"REMOTE_ADDR": "10.0.0.9"}).get_json()["csrf_token"]
    assert other.post("/api/auth/login", json={"username": "rev", "password": PASSWORD},
                      headers={"X-CSRF-Token": csrf2}, environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200


def test_bad_rate_limit_setting_is_refused(tmp_path, monkeypatch):
    from backend.config import Config, ConfigError

    monkeypatch.setenv("CELLLOOP_RATELIMIT_LINK_WRITES", "lots")
    with pytest.raises(ConfigError, match="CELLLOOP_RATELIMIT_LINK_WRITES"):
        Config.from_env(instance_dir=tmp_path)


def test_stored_labels_unchanged_by_refused_upload(world):
    tid = world.task_ids[0]
    rc = world.app.test_client()
    h = {"X-CSRF-Token": login(rc, "rev")}
    rc.post(f"/api/task/{world.tokens[tid]}/submit", json={"base_revision": 0})
    rc.post(f"/api/review/tasks/{tid}/start", json={}, headers=h)
    wrong = encode_array(np.zeros((64, 96, 2), np.float32))
    resp = rc.put(f"/api/review/tasks/{tid}/labels?base_revision=0", data=wrong, headers=h)
    assert resp.status_code == 400 and "dtype" in json.loads(resp.data)["error"]
    assert len(_revisions(world)) == 1

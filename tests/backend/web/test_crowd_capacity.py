"""A server that holds a crowd: each crowd link's CPU budget and request rates (in memory and shared through Redis),
rate limits on image and labels reads, patches kept in revision rows, and the cheaper edit path keeping its
behaviour (fewer statements per edit, the same access log lines)."""
from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import undefer

from backend.config import Config, ConfigError
from backend.edits import apply_edit
from backend.store.arrays import decode_array
from backend.store.models import Revision
from backend.web import link_limits

from ..conftest import login, make_world

REDIS_URL = "redis://127.0.0.1:6379/0"


def _paint(y, x, label, layer=0):
    return {"tool": "paint", "params": {"layer": layer, "points": [[y, x], [y, x + 6]], "radius": 2, "label": label}}


def _edit(world, token, base, y=20, x=20, label=7):
    return world.client.post(f"/api/task/{token}/edit", json={"base_revision": base, **_paint(y, x, label)})


def _revisions(world, task_id):
    with world.session() as s:
        return s.scalars(select(Revision).where(Revision.task_id == task_id).order_by(Revision.number)
                         .options(undefer(Revision.patch_bytes))).all()


def test_a_link_that_spends_its_cpu_budget_gets_429_while_another_link_is_served(tmp_path, monkeypatch):
    # a tiny budget (20 ms of CPU, refilled at 0.1% of a core) and request rates far away: only the CPU counts
    monkeypatch.setenv("CELLLOOP_LINK_CPU_BURST_S", "0.02")
    monkeypatch.setenv("CELLLOOP_LINK_CPU_SHARE", "0.001")
    monkeypatch.setenv("CELLLOOP_RATELIMIT_LINK_READS", "100000 per second")
    world = make_world(tmp_path)
    a, b = (world.tokens[t] for t in world.task_ids)
    codes = []
    for _ in range(400):
        resp = world.client.get(f"/api/task/{a}/labels")
        codes.append(resp.status_code)
        if resp.status_code != 200:
            break
    assert codes[-1] == 429 and set(codes[:-1]) == {200} and len(codes) > 1, codes
    body = resp.get_json()
    assert body["limit"] == "cpu" and "CPU budget" in body["error"]
    # the wait the refill needs, in whole seconds: the budget is more than 1 s of refill behind
    assert int(resp.headers["Retry-After"]) >= 1 and body["retry_after_s"] == int(resp.headers["Retry-After"])
    # refused before any work: an edit on the spent link stores nothing
    assert _edit(world, a, 0).status_code == 429
    assert len(_revisions(world, world.task_ids[0])) == 1
    # the other link has its own budget
    assert world.client.get(f"/api/task/{b}/labels").status_code == 200
    assert _edit(world, b, 0).status_code == 200


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cpu_budget_allows_a_burst_then_refills_at_its_share(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(link_limits.time, "monotonic", clock)
    limits = link_limits.LinkLimits(link_limits.MemoryStore(), writes="1000 per second", reads="1000 per second",
                                    burst_s=1.0, share=0.5, prefix="t")
    assert limits.retry_after("task:1", "write") is None
    limits.charge("task:1", 0.6)
    assert limits.retry_after("task:1", "write") is None  # 0.4 s left of the burst
    limits.charge("task:1", 0.9)  # the request that empties it may overdraw: -0.5 s
    wait, why = limits.retry_after("task:1", "write")
    assert why == "cpu" and wait == pytest.approx(1.0)  # 0.5 CPU-s of debt at 0.5 CPU-s per second
    assert limits.retry_after("task:2", "write") is None
    clock.now += 1.01
    assert limits.retry_after("task:1", "write") is None


def test_request_rates_are_moving_windows_with_the_wait_they_need(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(link_limits.time, "monotonic", clock)
    limits = link_limits.LinkLimits(link_limits.MemoryStore(), writes="3 per minute", reads="2 per second",
                                    burst_s=10, share=1, prefix="t")
    for _ in range(3):
        assert limits.retry_after("task:1", "write") is None
        clock.now += 10
    wait, why = limits.retry_after("task:1", "write")
    assert why == "rate" and wait == pytest.approx(30)  # the first of the three leaves the window at 60 s
    # reads are counted apart from writes
    assert limits.retry_after("task:1", "read") is None
    clock.now += 30.01
    assert limits.retry_after("task:1", "write") is None


def test_chunk_reads_of_a_big_task_have_their_own_rate(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(link_limits.time, "monotonic", clock)
    limits = link_limits.LinkLimits(link_limits.MemoryStore(), writes="3 per minute", reads="2 per second",
                                    chunk_reads="5 per second", burst_s=10, share=1, prefix="t")
    for _ in range(2):
        assert limits.retry_after("task:1", "read") is None
    assert limits.retry_after("task:1", "read")[1] == "rate"
    # an open of a big task reads many chunks: they neither count as nor wait for whole-array reads
    for _ in range(5):
        assert limits.retry_after("task:1", "chunk read") is None
    assert limits.retry_after("task:1", "chunk read")[1] == "rate"
    clock.now += 1.01
    assert limits.retry_after("task:1", "chunk read") is None


def test_budget_and_rates_are_shared_by_workers_through_redis():
    prefix = "test-" + secrets.token_hex(4)
    workers = [link_limits.LinkLimits(link_limits.store_from_url(REDIS_URL), writes="3 per minute",
                                      reads="100 per second", burst_s=0.5, share=0.01, prefix=prefix)
               for _ in range(2)]
    first, second = workers
    assert first.retry_after("task:9", "write") is None
    assert second.retry_after("task:9", "write") is None
    assert first.retry_after("task:9", "write") is None
    wait, why = second.retry_after("task:9", "write")  # the fourth write in the minute, whichever worker
    assert why == "rate" and 55 < wait <= 60
    # CPU one worker charged is gone for the other, once the charge has landed (with that worker's next request, or
    # on its own within CHARGE_DELAY_S)
    assert first.retry_after("task:10", "read") is None
    first.charge("task:10", 0.7)
    time.sleep(link_limits.CHARGE_DELAY_S + 0.25)
    wait, why = second.retry_after("task:10", "read")
    assert why == "cpu" and 15 < wait <= 20  # 0.2 s of debt at 1% of a core
    assert second.retry_after("task:11", "read") is None
    # a charge rides along with the same worker's next check: no wait needed there
    assert first.retry_after("task:12", "read") is None
    first.charge("task:12", 0.6)
    wait, why = first.retry_after("task:12", "read")
    assert why == "cpu" and 5 < wait <= 10


def test_image_and_labels_reads_are_rate_limited_per_link_and_per_reviewer(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_RATELIMIT_LINK_READS", "3 per minute")
    world = make_world(tmp_path)
    a, b = (world.tokens[t] for t in world.task_ids)
    codes = [world.client.get(f"/api/task/{a}/{what}").status_code for what in ("labels", "image", "labels", "labels")]
    assert codes == [200, 200, 200, 429]
    limited = world.client.get(f"/api/task/{a}/image")
    assert limited.status_code == 429 and limited.get_json()["limit"] == "rate"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # reads and writes are counted apart, and another link has its own count
    assert world.client.post(f"/api/task/{a}/submit", json={"base_revision": 0}).status_code == 200
    assert world.client.get(f"/api/task/{b}/labels").status_code == 200
    rc = world.app.test_client()
    login(rc, "rev")
    tid = world.task_ids[1]
    codes = [rc.get(f"/api/review/tasks/{tid}/labels").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_limits_are_configured_with_clear_errors(monkeypatch):
    for value in ("-1", "0", "lots", "inf"):
        monkeypatch.setenv("CELLLOOP_LINK_CPU_SHARE", value)
        with pytest.raises(ConfigError, match="CELLLOOP_LINK_CPU_SHARE"):
            Config.from_env(secret_key="k" * 32)
    monkeypatch.delenv("CELLLOOP_LINK_CPU_SHARE")
    monkeypatch.setenv("CELLLOOP_RATELIMIT_LINK_READS", "many")
    with pytest.raises(ConfigError, match="CELLLOOP_RATELIMIT_LINK_READS"):
        Config.from_env(secret_key="k" * 32)
    with pytest.raises(ConfigError, match="memory:// .* or redis://"):
        link_limits.store_from_url("memcached://127.0.0.1:11211")


def test_a_warm_workers_edit_is_two_statements_and_still_refuses_a_stale_base(tmp_path):
    world = make_world(tmp_path)
    tid = world.task_ids[0]
    token = world.tokens[tid]
    assert _edit(world, token, 0, label=7).status_code == 200  # this worker now holds revision 1's labels
    statements = []
    engine = world.app.extensions["cellloop.engine"]
    listener = lambda conn, cursor, statement, *rest: statements.append(statement.split()[0])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        resp = _edit(world, token, 1, y=40, x=60, label=8)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert resp.status_code == 200 and resp.headers["X-Revision"] == "2"
    # the conditional update and the revision row, no read of the task row: the worker knows the task from its last
    # commit and the labels from its memory (on PostgreSQL the two are one statement: test_known_task_edit.py)
    assert statements == ["UPDATE", "INSERT"], statements
    assert _edit(world, token, 1, y=50, x=10).status_code == 409
    # a second worker (its own cache) that served nothing yet agrees on the labels
    from backend.web.app import create_app

    other = create_app(world.config).test_client()
    expected = world.labels.copy()
    for y, x, label in ((20, 20, 7), (40, 60, 8)):
        apply_edit(expected, world.image, "paint", _paint(y, x, label)["params"]).apply(expected)
    for client in (world.client, other):
        resp = client.get(f"/api/task/{token}/labels")
        assert resp.headers["X-Revision"] == "2"
        np.testing.assert_array_equal(decode_array(resp.data), expected)


def test_patches_kept_in_revision_rows_replay_like_stored_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_PATCH_IN_ROW_BYTES", "65536")
    world = make_world(tmp_path)
    tid = world.task_ids[0]
    token = world.tokens[tid]
    c = world.client
    assert _edit(world, token, 0, label=7).status_code == 200
    assert _edit(world, token, 1, y=40, x=60, label=8).status_code == 200
    assert c.post(f"/api/task/{token}/undo", json={"base_revision": 2}).status_code == 200
    assert c.post(f"/api/task/{token}/redo", json={"base_revision": 3}).status_code == 200
    revs = _revisions(world, tid)
    assert [r.action for r in revs] == ["init", "edit", "edit", "undo", "redo"]
    assert all(r.patch_bytes and r.patch_key is None for r in revs[1:])
    assert not [k for k in world.storage().list("") if "/patches/" in k]  # no object written per edit
    expected = world.labels.copy()
    for y, x, label in ((20, 20, 7), (40, 60, 8)):
        apply_edit(expected, world.image, "paint", _paint(y, x, label)["params"]).apply(expected)
    from backend.web.app import create_app

    cold = create_app(world.config).test_client()  # no cache: snapshot plus the patches from the rows
    for client in (c, cold):
        resp = client.get(f"/api/task/{token}/labels")
        assert resp.headers["X-Revision"] == "4"
        np.testing.assert_array_equal(decode_array(resp.data), expected)
    # a patch over the size goes to storage as before
    monkeypatch.setenv("CELLLOOP_PATCH_IN_ROW_BYTES", "16")
    small = create_app(Config.from_env(instance_dir=world.config.instance_dir,
                                       database_url=world.config.database_url, storage_url=world.config.storage_url,
                                       secret_key=world.config.secret_key)).test_client()
    assert small.post(f"/api/task/{token}/edit", json={"base_revision": 4, **_paint(5, 5, 9)}).status_code == 200
    last = _revisions(world, tid)[-1]
    assert last.patch_bytes is None and world.storage().exists(last.patch_key)


def _access_line(logger_class, fmt, path):
    from gunicorn.config import Config as GunicornConfig

    cfg = GunicornConfig()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", fmt)
    logger = logger_class(cfg)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger.access_log.handlers = [Keep()]
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": path, "PATH_INFO": path.split("?")[0],
               "QUERY_STRING": "worker=w1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.7",
               "HTTP_REFERER": f'https://crowd.example{path}', "HTTP_USER_AGENT": 'a "quoted" agent'}
    resp = SimpleNamespace(status="200 OK", sent=1234, headers=[("Content-Type", "application/json")])
    req = SimpleNamespace(headers=[("User-Agent", 'a "quoted" agent'), ("X-Forwarded-For", "1.2.3.4")])
    logger.now = lambda: "[01/Dec/2026:23:00:00 +0000]"
    logger.access(resp, req, environ, timedelta(seconds=0, microseconds=12345))
    return records


def test_access_log_lines_are_gunicorns_with_tokens_masked():
    from gunicorn.glogging import Logger

    from backend.web.log_masking import TokenMaskingGunicornLogger, mask_tokens

    token = "eyJ0Ijo1LCJuIjowfQ.aBcDeF.secret-part"
    path = f"/api/task/{token}/edit?worker=w1"
    for fmt in ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
                "%(p)s %(s)s %(U)s %(M)s %(L)s", '%(h)s "%({x-forwarded-for}i)s" %({content-type}o)s %(b)s'):
        ours = _access_line(TokenMaskingGunicornLogger, fmt, path)
        theirs = [mask_tokens(line) for line in _access_line(Logger, fmt, path)]
        assert ours == theirs and len(ours) == 1, (fmt, ours, theirs)
        assert token not in ours[0] and "secret-part" not in ours[0]

"""The server as deployed (gunicorn, two workers): a rate limit shared through Redis holds across workers,
tokens never reach the access or error log, and a server killed with SIGKILL in the middle of a stream of
edits loses no acknowledged edit and leaves no half-written object."""
from __future__ import annotations

import re
import secrets
import threading
import time

import numpy as np
from sqlalchemy import select

from backend.store.arrays import decode_array
from backend.edits import Patch
from backend.store.models import Revision, Task

from ..conftest import make_world
from ..served import Served

REDIS_URL = "redis://127.0.0.1:6379/0"


def test_rate_limit_shared_by_two_workers_through_redis(tmp_path):
    world = make_world(tmp_path)
    token = world.tokens[world.task_ids[0]]
    limit = 6
    served = Served(world.config, tmp_path, workers=2, extra=("--access-logformat", "%(p)s %(s)s %(U)s"),
                    env={"CELLLOOP_RATELIMIT_STORAGE_URL": REDIS_URL,
                         "CELLLOOP_RATELIMIT_LINK_WRITES": f"{limit} per minute",
                         # the key prefix is per test run: no earlier run's counts in the shared store
                         "CELLLOOP_RATELIMIT_KEY_PREFIX": "test-" + secrets.token_hex(4)})
    with served:
        # concurrent bursts until both workers have answered (sync workers: a lone fast client may only ever
        # reach one of them)
        for _ in range(20):
            burst = [threading.Thread(target=served.request, args=("POST", f"/api/task/{token}/undo",
                                                                    {"base_revision": 0})) for _ in range(8)]
            for t in burst:
                t.start()
            for t in burst:
                t.join()
            time.sleep(0.2)  # the access log line follows the response
            if len(_answers_by_worker(served)) == 2:
                break
    by_worker = _answers_by_worker(served)
    assert len(by_worker) == 2, "both workers must have answered for the test to show a shared limit"
    # within the limit: 409 (nothing to undo); beyond it: 429, whichever worker answered
    assert sum(codes.count("409") for codes in by_worker.values()) == limit, by_worker
    assert all(set(codes) <= {"409", "429"} for codes in by_worker.values()), by_worker
    # a worker refused while it had itself granted fewer than the limit: it counted the other's grants
    assert any("429" in codes and codes.count("409") < limit for codes in by_worker.values()), by_worker


def _answers_by_worker(served) -> dict[str, list[str]]:
    by_worker: dict[str, list[str]] = {}
    for line in served.access_log.read_text().splitlines():
        pid, status, path = line.split()
        if path.endswith("/undo"):
            by_worker.setdefault(pid, []).append(status)
    return by_worker


def test_access_and_error_logs_mask_tokens(tmp_path):
    world = make_world(tmp_path)
    tid = world.task_ids[0]
    token = world.tokens[tid]
    # a task whose image object is gone: serving it fails on the server, and the failure is logged with its URL
    with world.session() as s:
        world.storage().delete(s.get(Task, tid).image_key)
    with Served(world.config, tmp_path, workers=1) as served:
        assert served.request("GET", f"/task/{token}")[0] == 200
        assert served.request("GET", f"/api/task/{token}/labels")[0] == 200
        assert served.request("GET", f"/api/task/{token}/image",
                              headers={"Referer": f"https://crowd.example/task/{token}"})[0] == 500
        assert served.request("POST", f"/api/task/{token}/open")[0] == 200
        time.sleep(0.5)  # the access log is written after the response
    access = served.access_log.read_text()
    errors = served.error_log.read_text()
    assert access.count("/task/<token>") >= 4, access
    assert "Exception on /api/task/<token>/image" in errors, errors
    for text in (access, errors):
        assert token not in text
        assert not re.search(r"/task/(?!<token>)[A-Za-z0-9_.-]{20,}", text)


def test_sigkill_mid_stream_loses_no_acknowledged_edit(tmp_path):
    world = make_world(tmp_path)
    tid = world.task_ids[0]
    token = world.tokens[tid]
    acked: list[tuple[int, dict]] = []
    stop = threading.Event()
    served = Served(world.config, tmp_path, workers=2).start()

    def stream():
        revision = 0
        for i in range(2000):
            if stop.is_set():
                return
            params = {"layer": i % 2, "points": [[(7 * i) % 64, (13 * i) % 96], [(7 * i + 5) % 64, (11 * i) % 96]],
                      "radius": 1 + i % 4, "label": 1 + i % 9, "overwrite": True}
            try:
                code, headers, _ = served.request("POST", f"/api/task/{token}/edit",
                                                  {"base_revision": revision, "tool": "paint", "params": params},
                                                  timeout=10)
            except OSError:
                return  # the server died under this request: not acknowledged
            if code == 429:  # the per-link write limit: a real client waits and goes on
                time.sleep(0.2)
                continue
            if code != 200:
                return
            revision = int(headers["X-Revision"])
            acked.append((revision, params))

    client = threading.Thread(target=stream)
    try:
        client.start()
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        served.kill()
    finally:
        stop.set()
        client.join(timeout=30)
        served.stop()
    assert len(acked) >= 40

    with world.session() as s:
        task = s.get(Task, tid)
        revisions = s.scalars(select(Revision).where(Revision.task_id == tid).order_by(Revision.number)).all()
        current = task.revision
    numbers = [r.number for r in revisions]
    assert numbers == list(range(current + 1)), "the history has a gap or a duplicate"
    # every acknowledged edit is in the history, with its parameters
    by_number = {r.number: r for r in revisions}
    for number, params in acked:
        assert by_number[number].action == "edit" and by_number[number].params == {"tool": "paint", **params}
    assert current in (acked[-1][0], acked[-1][0] + 1)  # at most the one edit in flight landed unacknowledged
    # no object is half-written: every stored array and patch decodes, every key a revision names exists
    storage = world.storage()
    keys = storage.list(f"projects/")
    for key in keys:
        data = storage.get(key)
        Patch.from_bytes(data) if key.endswith(".patch") else decode_array(data)
    for r in revisions:
        for key in (r.labels_key, r.patch_key):
            assert key is None or key in keys
    # the final labels equal the replay of the history from the initial labels
    labels = world.labels.copy()
    for r in revisions[1:]:
        Patch.from_bytes(storage.get(r.patch_key)).apply(labels, check=True)
    with Served(world.config, tmp_path, workers=2) as again:
        code, headers, body = again.request("GET", f"/api/task/{token}/labels")
        assert code == 200 and int(headers["X-Revision"]) == current
        np.testing.assert_array_equal(decode_array(body), labels)
        # and the task is editable again
        code, headers, _ = again.request("POST", f"/api/task/{token}/edit", {
            "base_revision": current, "tool": "paint",
            "params": {"layer": 0, "points": [[1, 1]], "radius": 1, "label": 3, "overwrite": True}})
        assert code == 200 and int(headers["X-Revision"]) == current + 1

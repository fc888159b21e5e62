"""Racing edits on one revision through a real threaded HTTP server: exactly one wins, the others get 409,
and nothing the winner wrote is lost or overwritten."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from werkzeug.serving import make_server

from backend.tasks import revisions as tasks
from backend.store.arrays import decode_array

from ..conftest import make_world


def _race(world, n=8):
    server = make_server("127.0.0.1", 0, world.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    token = world.tokens[world.task_ids[0]]
    barrier = threading.Barrier(n)
    results = [None] * n

    def edit(i):
        body = json.dumps({"base_revision": 0, "tool": "paint",
                           "params": {"layer": 0, "points": [[50, 5 + 10 * i]], "radius": 2, "label": 20 + i}})
        req = urllib.request.Request(f"{base}/api/task/{token}/edit", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        barrier.wait()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                results[i] = (r.status, int(r.headers["X-Revision"]))
        except urllib.error.HTTPError as err:
            results[i] = (err.code, json.loads(err.read()).get("revision"))

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with urllib.request.urlopen(f"{base}/api/task/{token}/labels") as r:
            labels = decode_array(r.read())
            revision = int(r.headers["X-Revision"])
    finally:
        server.shutdown()
    return results, labels, revision


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_edits_on_one_revision(tmp_path, backend, request):
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    world = make_world(tmp_path, database_url=url)
    results, labels, revision = _race(world)
    winners = [i for i, (code, _) in enumerate(results) if code == 200]
    assert len(winners) == 1, results
    assert all(code == 409 and rev == 1 for i, (code, rev) in enumerate(results) if i not in winners), results
    assert revision == 1
    w = winners[0]
    # the stored labels hold the winner's stroke and no loser's
    painted = set(np.unique(labels[..., 0])) - {0, 1, 2}
    assert painted == {20 + w}
    keys = world.storage().list(f"projects/")
    task_prefix = f"/tasks/{world.task_ids[0]}/"
    # the losers took back what they wrote: revision 0's snapshot and the winner's patch (and its snapshot,
    # when the task is small enough to store one with every revision)
    snapshots = 2 if 64 * 96 <= tasks.SNAPSHOT_ALWAYS_PIXELS else 1
    assert sum(task_prefix in k and "/labels/" in k for k in keys) == snapshots
    assert sum(task_prefix in k and "/patches/" in k for k in keys) == 1

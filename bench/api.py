"""Latency of label edits through the HTTP API (Flask app, SQLite + local folder storage, in process).

    python bench/api.py            # 270 and 2048 px tasks
    python bench/api.py --quick    # fewer repetitions

One JSON line per case ``api_edit@SIZE``: ``median_ms``/``p95_ms`` of one paint stroke posted to
``/api/task/<token>/edit`` (token check, current labels, apply the tool, store the patch (and a snapshot
where due), commit the revision, answer the patch) on a worker that has served the task before, and of the
same edit's ``undo``; ``first_edit_ms`` is the first edit on a fresh worker (it decodes the stored image and
labels); ``tool_median_ms`` is the tool alone (``apply_edit``), so the rest is what the server adds;
``stored_kb`` the median bytes written per edit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# one client editing one link as fast as it can (an edit and its undo back to back, ~100 requests a second at 270 px,
# seconds of CPU at 2048 px): the production defaults (20 writes a second per link, half a core of CPU) would stop it
# with 429s, so the limits it needs are set explicitly, far above what it sends, and the figures are the edit's own
BENCH_LIMITS = {"ratelimit_link_writes": "1000 per second", "ratelimit_link_reads": "1000 per second",
                "link_cpu_burst_s": 600.0, "link_cpu_share": 1.0}


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bench(size: int, reps: int) -> dict:
    from backend.store import db as dbmod
    from backend.web.app import create_app
    from backend.web.auth import make_task_token
    from backend.config import Config
    from backend.edits import apply_edit
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService
    from pipeline import synthetic

    X, y = synthetic.make_tissue((size, size), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = Config.from_env(instance_dir=tmp, database_url=f"sqlite:///{tmp / 'db.sqlite'}",
                                 storage_url=str(tmp / "storage"), secret_key=secrets.token_urlsafe(32),
                                 **BENCH_LIMITS)
        dbmod.upgrade(config.database_url)
        app = create_app(config)
        session = app.extensions["cellloop.sessionmaker"]()
        storage = app.extensions["cellloop.storage"]
        project = project_from_image(session, storage, name="bench", image=X, channel_names=["nuclear", "membrane"])
        batch = Batch(project=project, name="b")
        session.add(batch)
        task = TaskService(session, storage).create_task(batch, (0, 0, size, size), X, y)
        session.commit()
        with app.app_context():
            token = make_task_token(task)
        session.close()
        client = app.test_client()
        revision = client.get(f"/api/task/{token}").get_json()["revision"]

        rng = np.random.default_rng(0)
        edits, undos, tools, written = [], [], [], []
        for _ in range(reps):
            cy, cx = (int(v) for v in rng.integers(40, size - 40, 2))
            params = {"layer": 0, "points": [[cy, cx - 15], [cy + 3, cx], [cy, cx + 15]], "radius": 4, "overwrite": True,
                      "label": int(y[..., 0].max()) + 1}
            labels = y.copy()
            t0 = time.perf_counter()
            apply_edit(labels, X, "paint", params)
            tools.append(time.perf_counter() - t0)
            before = _folder_bytes(tmp / "storage")
            t0 = time.perf_counter()
            resp = client.post(f"/api/task/{token}/edit", json={"base_revision": revision, "tool": "paint",
                                                                 "params": params})
            edits.append(time.perf_counter() - t0)
            assert resp.status_code == 200, resp.get_data(as_text=True)
            written.append(_folder_bytes(tmp / "storage") - before)
            revision = int(resp.headers["X-Revision"])
            t0 = time.perf_counter()
            resp = client.post(f"/api/task/{token}/undo", json={"base_revision": revision})
            undos.append(time.perf_counter() - t0)
            assert resp.status_code == 200, resp.get_data(as_text=True)
            revision = int(resp.headers["X-Revision"])
    first, edits = edits[0], edits[1:]
    return {
        "case": f"api_edit@{size}", "n": len(edits),
        "median_ms": round(float(np.median(edits)) * 1000, 2), "p95_ms": round(float(np.percentile(edits, 95)) * 1000, 2),
        "first_edit_ms": round(first * 1000, 1),
        "undo_median_ms": round(float(np.median(undos)) * 1000, 2),
        "tool_median_ms": round(float(np.median(tools)) * 1000, 3),
        "stored_kb": round(float(np.median(written)) / 1024, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    device = f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    for size, reps in ((270, 10 if args.quick else 41), (2048, 4 if args.quick else 21)):
        print(json.dumps({"bench": "api", **bench(size, reps), "device": device, "limits": BENCH_LIMITS,
                          "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

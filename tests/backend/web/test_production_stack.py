"""The same server on the production stack: PostgreSQL for rows and S3 (a real S3 endpoint on loopback)
for arrays."""
from __future__ import annotations

import numpy as np

from backend.store.arrays import decode_array

from ..conftest import login, make_world


def test_edit_review_cycle_on_postgres_and_s3(tmp_path, pg_url, s3_server, s3_bucket):
    world = make_world(tmp_path, database_url=pg_url,
                       storage_url=f"s3://{s3_bucket}/cellloop?endpoint_url={s3_server}&region=us-east-1&create_bucket=1")
    tid = world.task_ids[0]
    token = world.tokens[tid]
    c = world.client
    resp = c.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint",
                  "params": {"layer": 1, "points": [[40, 40], [40, 50]], "radius": 2, "label": 11}})
    assert resp.status_code == 200, resp.get_json()
    labels = decode_array(c.get(f"/api/task/{token}/labels").data)
    assert (labels[40, 40:51, 1] == 11).all()
    assert c.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint",
                  "params": {"layer": 1, "points": [[4, 4]], "radius": 2, "label": 12}}).status_code == 409
    assert c.post(f"/api/task/{token}/undo", json={"base_revision": 1}).status_code == 200
    np.testing.assert_array_equal(decode_array(c.get(f"/api/task/{token}/labels").data), world.labels)
    assert c.post(f"/api/task/{token}/submit", json={"base_revision": 2}).status_code == 200
    rc = world.app.test_client()
    h = {"X-CSRF-Token": login(rc, "rev")}
    assert rc.post(f"/api/review/tasks/{tid}/approve", json={}, headers=h).get_json()["state"] == "approved"
    # every revision's snapshot and patch is in the bucket, under the project's prefix
    keys = world.storage().list(f"projects/")
    assert sum("/labels/" in k for k in keys) >= 2  # the 2 tasks' initial snapshots
    assert sum("/patches/" in k for k in keys) == 2

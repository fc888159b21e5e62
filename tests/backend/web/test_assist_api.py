"""The assist tools through the HTTP API: a task with maps offers them (the JSON says from which model), one without
says why not; a preview is the edit's own patch and stores nothing; an assist edit is one undo step."""
from __future__ import annotations

import numpy as np
import pytest

from backend.edits import Patch, apply_edit
from backend.store.arrays import ArrayError, decode_array
from backend.store.models import Task
from backend.tasks.maps import NOISE_FLOOR, decode_maps, encode_maps, keep_crop_maps
from pipeline.model.maps import maps_from_labels

from ..conftest import login


def _truth():
    """The world's labels (64 x 96) plus a third cell that the task's labels miss."""
    yy, xx = np.mgrid[:64, :96]
    truth = np.zeros((64, 96, 2), np.int32)
    truth[10:20, 10:20, 0] = 1
    truth[12:18, 12:18, 1] = 1
    truth[30:45, 40:60, 0] = 2
    disc = (yy - 25) ** 2 + (xx - 80) ** 2 <= 36
    truth[..., 0][disc] = 3
    truth[..., 1][(yy - 25) ** 2 + (xx - 80) ** 2 <= 9] = 3
    return truth


def _give_maps(world, task_id, maps, model="p-v1"):
    session = world.session()
    try:
        task = session.get(Task, task_id)
        return keep_crop_maps(session, world.storage(), task, maps, model)
    finally:
        session.close()


def _labels(world, token):
    resp = world.client.get(f"/api/task/{token}/labels")
    return decode_array(resp.data), int(resp.headers["X-Revision"])


def test_assist_click_preview_edit_and_undo(world):
    tid, other = world.task_ids
    maps = maps_from_labels(_truth())
    key = _give_maps(world, tid, maps)
    assert world.storage().exists(key) and "p-v1" in key
    token = world.tokens[tid]
    info = world.client.get(f"/api/task/{token}").get_json()
    assert info["assist"] == {"available": True, "model": "p-v1", "reason": None}
    labels, revision = _labels(world, token)
    params = {"layer": 0, "point": [25, 80]}
    expected = apply_edit(labels, None, "assist_click", params, maps=maps)
    assert not expected.is_empty

    preview = world.client.post(f"/api/task/{token}/preview", json={
        "base_revision": revision, "tool": "assist_click", "params": params})
    assert preview.status_code == 200, preview.get_json()
    assert Patch.from_bytes(preview.data) == expected
    assert _labels(world, token)[1] == revision  # a preview stores nothing
    # the box preview at two sensitivities, then the same through /edit
    for s in (0.2, 0.8):
        box = world.client.post(f"/api/task/{token}/preview", json={
            "base_revision": revision, "tool": "assist_box",
            "params": {"layer": 0, "box": [15, 65, 36, 94], "sensitivity": s}})
        assert box.status_code == 200 and not Patch.from_bytes(box.data).is_empty

    edit = world.client.post(f"/api/task/{token}/edit", json={
        "base_revision": revision, "tool": "assist_click", "params": {**params, "extra": "dropped"}})
    assert edit.status_code == 200, edit.get_json()
    assert Patch.from_bytes(edit.data) == expected
    after, rev = _labels(world, token)
    assert rev == revision + 1 and np.array_equal(after, expected.apply(labels.copy()))
    assert after[25, 80, 0] == 3  # the next unused id
    assert world.client.get(f"/api/task/{token}").get_json()["can_undo"]
    undo = world.client.post(f"/api/task/{token}/undo", json={"base_revision": rev})
    assert undo.status_code == 200
    assert np.array_equal(_labels(world, token)[0], labels)

    # the other task has no maps: the JSON says why, and the tools refuse with that reason
    other_token = world.tokens[other]
    info = world.client.get(f"/api/task/{other_token}").get_json()
    assert info["assist"]["available"] is False and "no model maps" in info["assist"]["reason"]
    refused = world.client.post(f"/api/task/{other_token}/edit", json={
        "base_revision": 0, "tool": "assist_click", "params": params})
    assert refused.status_code == 400 and "no model maps" in refused.get_json()["error"]
    assert _labels(world, other_token)[1] == 0


def test_preview_is_checked_like_an_edit(world):
    tid = world.task_ids[0]
    _give_maps(world, tid, maps_from_labels(_truth()))
    token = world.tokens[tid]
    stale = world.client.post(f"/api/task/{token}/preview", json={
        "base_revision": 5, "tool": "assist_click", "params": {"point": [25, 80]}})
    assert stale.status_code == 409 and stale.get_json()["revision"] == 0
    bad = world.client.post(f"/api/task/{token}/preview", json={
        "base_revision": 0, "tool": "assist_box", "params": {"box": [0, 0, 10, 10], "sensitivity": 2}})
    assert bad.status_code == 400 and "sensitivity" in bad.get_json()["error"]
    huge = world.client.post(f"/api/task/{token}/preview", json={
        "base_revision": 0, "tool": "assist_box", "params": {"box": [0, 0, 5000, 5000]}})
    assert huge.status_code == 413
    # a reviewer previews on a task in review through the review API
    submit = world.client.post(f"/api/task/{token}/submit", json={"base_revision": 0})
    assert submit.status_code == 200
    closed = world.client.post(f"/api/task/{token}/preview", json={
        "base_revision": 0, "tool": "assist_click", "params": {"point": [25, 80]}})
    assert closed.status_code == 409
    csrf = login(world.client, "rev")
    assert world.client.post(f"/api/review/tasks/{tid}/start", headers={"X-CSRF-Token": csrf}).status_code == 200
    seen = world.client.post(f"/api/review/tasks/{tid}/preview", headers={"X-CSRF-Token": csrf}, json={
        "base_revision": 0, "tool": "assist_click", "params": {"point": [25, 80]}})
    assert seen.status_code == 200 and not Patch.from_bytes(seen.data).is_empty
    info = world.client.get(f"/api/review/tasks/{tid}").get_json()
    assert info["assist"]["available"] and info["revision"] == 0


def test_maps_are_replaced_and_cleared_with_the_prelabel(world):
    tid = world.task_ids[0]
    maps = maps_from_labels(_truth())
    first = _give_maps(world, tid, maps, "p-v1")
    second = _give_maps(world, tid, maps, "p-v2")
    assert not world.storage().exists(first) and world.storage().exists(second)
    assert _give_maps(world, tid, None, "baseline") is None
    assert not world.storage().exists(second)
    info = world.client.get(f"/api/task/{world.tokens[tid]}").get_json()
    assert info["assist"]["available"] is False


def test_maps_encoding_round_trips_and_checks_the_shape():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    data = encode_maps(maps)
    assert np.array_equal(decode_maps(data, (37, 53)), np.where(maps < NOISE_FLOOR, 0, maps))
    smooth = maps_from_labels(_truth())
    assert len(encode_maps(smooth)) < smooth.nbytes / 10
    with pytest.raises(ArrayError):
        decode_maps(data, (53, 37))
    with pytest.raises(ValueError):
        encode_maps(maps.astype(np.float32))

"""A long stroke the editor cuts into several requests (they share a ``stroke`` id) is one undo step."""
from __future__ import annotations

import numpy as np

from backend.store.arrays import decode_array


def _labels(world, token):
    resp = world.client.get(f"/api/task/{token}/labels")
    return decode_array(resp.data), int(resp.headers["X-Revision"])


def _post(world, token, action, body):
    resp = world.client.post(f"/api/task/{token}/{action}", json=body)
    assert resp.status_code == 200, resp.get_json()
    return int(resp.headers["X-Revision"])


def test_the_parts_of_one_stroke_undo_and_redo_together(world):
    token = world.tokens[world.task_ids[0]]
    original, rev = _labels(world, token)
    states = [original]
    # one stroke in three parts (the middle one crosses cell 2, which exclude mode spares), then a stroke of its own
    for points in ([[50, 5], [50, 30]], [[50, 30], [40, 50]], [[40, 50], [55, 80]]):
        rev = _post(world, token, "edit", {"base_revision": rev, "tool": "paint", "params": {
            "layer": 0, "points": points, "radius": 2, "label": 7, "stroke": "s-1"}})
    stroke = _labels(world, token)[0]
    rev = _post(world, token, "edit", {"base_revision": rev, "tool": "erase", "params": {
        "layer": 0, "points": [[50, 10]], "radius": 3, "label": 7, "stroke": "s-2"}})
    erased = _labels(world, token)[0]
    assert (stroke != original).sum() > 100 and (erased != stroke).any()

    rev = _post(world, token, "undo", {"base_revision": rev})
    np.testing.assert_array_equal(_labels(world, token)[0], stroke)
    rev = _post(world, token, "undo", {"base_revision": rev})  # the whole three-part stroke at once
    np.testing.assert_array_equal(_labels(world, token)[0], original)
    info = world.client.get(f"/api/task/{token}").get_json()
    assert not info["can_undo"] and info["can_redo"]
    rev = _post(world, token, "redo", {"base_revision": rev})
    np.testing.assert_array_equal(_labels(world, token)[0], stroke)
    rev = _post(world, token, "redo", {"base_revision": rev})
    np.testing.assert_array_equal(_labels(world, token)[0], erased)
    assert rev == 8  # 4 edits, 2 undos, 2 redos: each one revision

    # parts of a stroke are one step only while nothing else lands between them
    rev = _post(world, token, "edit", {"base_revision": rev, "tool": "paint", "params": {
        "layer": 0, "points": [[5, 60], [5, 90]], "radius": 1, "label": 8, "stroke": "s-3"}})
    rev = _post(world, token, "edit", {"base_revision": rev, "tool": "delete", "params": {"layer": 0, "label": 1}})
    rev = _post(world, token, "edit", {"base_revision": rev, "tool": "paint", "params": {
        "layer": 0, "points": [[8, 60], [8, 90]], "radius": 1, "label": 8, "stroke": "s-3"}})
    rev = _post(world, token, "undo", {"base_revision": rev})
    after = _labels(world, token)[0]
    assert (after[5, 60:91, 0] == 8).all() and not (after[..., 0] == 1).any() and not (after[8, 60:91, 0] == 8).any()


def test_a_bad_stroke_id_is_refused(world):
    token = world.tokens[world.task_ids[0]]
    for bad in ("", "x" * 65, "a b", 7, ["s"]):
        resp = world.client.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint", "params": {
            "layer": 0, "points": [[5, 5]], "radius": 1, "label": 3, "stroke": bad}})
        assert resp.status_code == 400 and "stroke" in resp.get_json()["error"], bad
    assert _labels(world, token)[1] == 0

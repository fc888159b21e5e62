"""Big tasks are served in chunks (every level, 16-bit exact) and an edit on one reads and writes only the chunks it
touches, counted through the storage interface."""
from __future__ import annotations

import numpy as np
import pytest

from backend.edits import apply_edit
from backend.store.arrays import decode_array
from backend.store.cache import ArrayCache
from backend.store.chunks import ChunkGrid
from backend.tasks import revisions as revisions_mod
from backend.tasks.chunked import MANIFEST_SUFFIX

from ..conftest import PASSWORD, login, make_world

H, W = 1100, 1300  # a 3x3 grid of 512-px chunks at level 0, 2x2 at level 1, one at level 2


class CountingStorage:
    """The app's storage, recording every key read and written (the cache keys stay the inner storage's)."""

    def __init__(self, inner):
        self.inner = inner
        self.reads, self.writes = [], []

    def __repr__(self):
        return repr(self.inner)

    def get(self, key):
        self.reads.append(key)
        return self.inner.get(key)

    def put(self, key, data):
        self.writes.append(key)
        return self.inner.put(key, data)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reset(self):
        self.reads, self.writes = [], []


@pytest.fixture
def big(tmp_path):
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService
    from backend.web.auth import make_task_token

    world = make_world(tmp_path, n_tasks=1)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 65536, (H, W, 2), dtype=np.uint16)  # the full 16-bit range: exactness shows
    labels = np.zeros((H, W, 2), np.int32)
    labels[..., 0] = (np.arange(H)[:, None] // 37) * 100 + np.arange(W)[None, :] // 41 + 1
    labels[::7, :, 1] = labels[::7, :, 0]
    with world.session() as session:
        storage = world.storage()
        project = project_from_image(session, storage, name="big", image=image, channel_names=["dna", "mem"])
        batch = Batch(project=project, name="b")
        session.add(batch)
        task = TaskService(session, storage).create_task(batch, (0, 0, H, W), image, labels)
        session.commit()
        with world.app.app_context():
            token = make_task_token(task)
        world.big = {"id": task.id, "token": token, "image": image, "labels": labels}
    return world


def _chunk(client, url):
    resp = client.get(url)
    assert resp.status_code == 200, resp.get_json()
    return decode_array(resp.data), resp


def _expected(array, grid, level, i, j):
    f, s = 1 << level, grid.size
    return array[::f, ::f][i * s:(i + 1) * s, j * s:(j + 1) * s]


def _paint(y, x, label, radius=4):
    return {"layer": 0, "points": [[y, x], [y + 6, x + 9]], "radius": radius, "label": label, "overwrite": True}


def _replay(world):
    """The task's labels as its stored revisions say, rebuilt by a worker with no cache."""
    from backend.tasks import TaskService
    from backend.store.models import Task

    with world.session() as session:
        storage = world.app.extensions["cellloop.storage"]
        return TaskService(session, getattr(storage, "inner", storage)).labels(session.get(Task, world.big["id"]))


def test_every_chunk_is_the_arrays_sub_block_16_bit_exact(big):
    token, image, labels = big.big["token"], big.big["image"], big.big["labels"]
    info = big.client.get(f"/api/task/{token}").get_json()
    assert info["chunks"] == {"size": 512, "levels": [[1100, 1300], [550, 650], [275, 325]]}
    grid = ChunkGrid((H, W))
    for level in range(grid.levels):
        for i, j in grid.chunks(level):
            got, _ = _chunk(big.client, f"/api/task/{token}/image/{level}/{i}/{j}")
            assert got.dtype == np.uint16 and np.array_equal(got, _expected(image, grid, level, i, j))
            got, resp = _chunk(big.client, f"/api/task/{token}/labels/{level}/{i}/{j}")
            assert resp.headers["X-Revision"] == "0" and resp.headers["Cache-Control"] == "no-store"
            assert got.dtype == np.int32 and np.array_equal(got, _expected(labels, grid, level, i, j))
    # small tasks keep the whole-array routes only
    small = big.tokens[big.task_ids[0]]
    assert big.client.get(f"/api/task/{small}").get_json()["chunks"] is None


def test_bad_chunk_addresses_and_tokens_get_a_clear_4xx(big):
    token, client = big.big["token"], big.client
    cases = {
        f"/api/task/{token}/image/3/0/0": (404, "level 3 does not exist"),
        f"/api/task/{token}/labels/0/3/0": (404, "outside level 0's 3x3 grid"),
        f"/api/task/{token}/image/1/0/2": (404, "outside level 1's 2x2 grid"),
        f"/api/task/{token}/image/-1/0/0": (400, "non-negative integer"),
        f"/api/task/{token}/labels/0/x/0": (400, "non-negative integer"),
        f"/api/task/{token}/image/0/0/1e3": (400, "non-negative integer"),
        f"/api/task/{token}/labels/0/0/0?revision=abc": (400, "'revision'"),
        f"/api/task/{big.tokens[big.task_ids[0]]}/image/0/0/0": (404, "not served in chunks"),
    }
    # a forged link is refused exactly as the whole-array routes refuse it
    forged = f"/api/task/{token[:-3]}xyz"
    assert client.get(forged + "/image/0/0/0").get_json() == client.get(forged + "/image").get_json()
    assert client.get(forged + "/labels/0/0/0").status_code == client.get(forged + "/labels").status_code == 404
    for url, (status, words) in cases.items():
        resp = client.get(url)
        assert resp.status_code == status, (url, resp.get_json())
        assert words in resp.get_json()["error"], (url, resp.get_json())
    # an editor assembling revision 0 is told (409, with the revision) that the task moved on
    resp = client.post(f"/api/task/{token}/edit", json={"base_revision": 0, "tool": "paint",
                                                        "params": _paint(20, 20, 7)})
    assert resp.status_code == 200
    resp = client.get(f"/api/task/{token}/labels/0/0/0?revision=0")
    assert resp.status_code == 409 and resp.get_json()["revision"] == 1
    assert client.get(f"/api/task/{token}/labels/0/0/0?revision=1").status_code == 200
    # reviewers read the same chunks, logged in
    tid = big.big["id"]
    assert client.get(f"/api/review/tasks/{tid}/image/0/0/0").status_code == 401
    login(client, "rev", PASSWORD)
    got, _ = _chunk(client, f"/api/review/tasks/{tid}/image/2/0/0")
    assert np.array_equal(got, big.big["image"][::4, ::4])
    assert client.get(f"/api/review/tasks/{tid}/labels/1/2/0").status_code == 404
    # a revoked link reads no chunk either
    from backend.store.models import Task
    with big.session() as session:
        session.get(Task, tid).token_nonce += 1
        session.commit()
    for url in (f"/api/task/{token}/image/0/0/0", f"/api/task/{token}/labels/0/0/0"):
        resp = client.get(url)
        assert resp.status_code == 404 and resp.get_json()["error"] == "unknown task link"


def test_labels_chunks_follow_every_edit_on_warm_and_cold_workers(big, monkeypatch):
    monkeypatch.setattr(revisions_mod, "SNAPSHOT_EVERY", 4)
    token, client = big.big["token"], big.client
    current = big.big["labels"].copy()
    grid = ChunkGrid((H, W))
    rng = np.random.default_rng(5)
    for n in range(1, 10):
        y, x = (int(v) for v in rng.integers(0, [H - 10, W - 10]))
        params = _paint(y, x, 5000 + n, radius=int(rng.integers(2, 40)))
        apply_edit(current, None, "paint", params).apply(current)
        resp = client.post(f"/api/task/{token}/edit", json={"base_revision": n - 1, "tool": "paint", "params": params})
        assert resp.status_code == 200 and resp.headers["X-Revision"] == str(n)
        if n % 3 == 0:
            big.app.extensions["cellloop.cache"] = ArrayCache(256 << 20)  # a worker that never saw the task
        for level in range(grid.levels):
            for i, j in grid.chunks(level):
                got, resp = _chunk(client, f"/api/task/{token}/labels/{level}/{i}/{j}?revision={n}")
                assert np.array_equal(got, _expected(current, grid, level, i, j)), (n, level, i, j)
    resp = client.get(f"/api/task/{token}/labels")
    assert np.array_equal(decode_array(resp.data), current)


def test_an_edit_reads_and_writes_only_the_chunks_it_touches(big, monkeypatch):
    monkeypatch.setattr(revisions_mod, "SNAPSHOT_EVERY", 4)
    counting = CountingStorage(big.app.extensions["cellloop.storage"])
    big.app.extensions["cellloop.storage"] = counting
    token, client = big.big["token"], big.client
    current = big.big["labels"].copy()  # what the edits make, computed apart

    def edit(base, y, x, label):
        counting.reset()
        resp = client.post(f"/api/task/{token}/edit", json={"base_revision": base, "tool": "paint",
                                                            "params": _paint(y, x, label)})
        assert resp.status_code == 200
        apply_edit(current, None, "paint", _paint(y, x, label)).apply(current)
        return [k for k in counting.reads], [k for k in counting.writes]

    edit(0, 100, 100, 9001)  # the first edit on this worker reads the labels once
    # warm worker, no snapshot due: nothing read (not even the image), one patch written
    reads, writes = edit(1, 600, 700, 9002)  # level-0 chunk (1, 1)
    assert reads == [] and len(writes) == 1 and writes[0].endswith(".patch")
    edit(2, 120, 1200, 9003)  # chunk (0, 2)
    # revision 4 is a snapshot: the chunks changed since revision 0's and the coarse chunks over them, only
    reads, writes = edit(3, 1050, 100, 9004)  # chunk (2, 0)
    chunk_writes = sorted(k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1].rsplit("-", 1)[0]
                          for k in writes if k.endswith(".npy.gz"))
    assert chunk_writes == sorted(["0/0-0", "0/1-1", "0/0-2", "0/2-0", "1/0-0", "1/0-1", "1/1-0", "2/0-0"])
    assert sum(k.endswith(MANIFEST_SUFFIX) for k in writes) == 1 and sum(k.endswith(".patch") for k in writes) == 1
    # what it read: the last snapshot's manifest and the earlier patches (for their boxes), no chunk and no image
    assert not [k for k in reads if k.endswith(".npy.gz")]
    # a cold worker serving one chunk reads that chunk, not the rest of the labels
    big.app.extensions["cellloop.cache"] = ArrayCache(256 << 20)
    edit(4, 300, 300, 9005)  # the next revision is a patch on top of revision 4's snapshot
    big.app.extensions["cellloop.cache"] = ArrayCache(256 << 20)
    counting.reset()
    got, _ = _chunk(client, f"/api/task/{token}/labels/0/2/2")
    chunk_reads = [k for k in counting.reads if k.endswith(".npy.gz")]
    assert len(chunk_reads) == 1 and "/0/2-2-" in chunk_reads[0]
    assert np.array_equal(got, big.big["labels"][1024:, 1024:])
    # the chunk revision 5 painted: revision 4's stored chunk with revision 5's patch on it, still one chunk read
    counting.reset()
    got, _ = _chunk(client, f"/api/task/{token}/labels/0/0/0")
    chunk_reads = [k for k in counting.reads if k.endswith(".npy.gz")]
    assert len(chunk_reads) == 1 and "/0/0-0-" in chunk_reads[0] and "/000004-" in chunk_reads[0]
    assert (got[..., 0] == 9005).any() and (got[..., 0] == 9001).any()
    # on a task too big to hold (PARTIAL_ABOVE_PIXELS), a stroke on a worker without it reads the chunks under it
    monkeypatch.setattr(revisions_mod, "PARTIAL_ABOVE_PIXELS", 0)
    def chunks_named(keys):
        return sorted(k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1].rsplit("-", 1)[0]
                      for k in keys if k.endswith(".npy.gz"))

    for base, (y, x, label) in enumerate([(700, 100, 9006), (508, 1020, 9007)], start=5):
        big.app.extensions["cellloop.cache"] = ArrayCache(256 << 20)
        reads, writes = edit(base, y, x, label)
        assert chunks_named(reads) == {9006: ["0/1-0"], 9007: ["0/0-1", "0/0-2", "0/1-1", "0/1-2"]}[label]
        assert len(writes) == 1 and writes[0].endswith(".patch")
    # revision 8 is a snapshot made from labels read in part: it rewrites the chunks revisions 5-8 touched (and the
    # coarse ones over them) from revision 4's chunks and the patches since, reading those and nothing else
    big.app.extensions["cellloop.cache"] = ArrayCache(256 << 20)
    before_stroke = current.copy()
    reads, writes = edit(7, 40, 40, 9008)
    dirty = ["0/0-0", "0/0-1", "0/0-2", "0/1-0", "0/1-1", "0/1-2", "1/0-0", "1/0-1", "2/0-0"]
    assert chunks_named(writes) == dirty and chunks_named(reads) == dirty  # each read once, the stroke's included
    # undoing it reads the chunk its patch covers (revision 8's), writes the undo's patch
    big.app.extensions["cellloop.cache"] = ArrayCache(256 << 20)
    counting.reset()
    resp = client.post(f"/api/task/{token}/undo", json={"base_revision": 8})
    assert resp.status_code == 200 and resp.headers["X-Revision"] == "9"
    assert chunks_named(counting.reads) == ["0/0-0"] and "/000008-" in [k for k in counting.reads if "/0/0-0" in k][0]
    assert len(counting.writes) == 1 and counting.writes[0].endswith(".patch")
    current[...] = before_stroke
    grid = ChunkGrid((H, W))
    for level in range(grid.levels):
        for i, j in grid.chunks(level):
            got, _ = _chunk(client, f"/api/task/{token}/labels/{level}/{i}/{j}")
            assert np.array_equal(got, _expected(current, grid, level, i, j)), (level, i, j)
    assert np.array_equal(_replay(big), current)

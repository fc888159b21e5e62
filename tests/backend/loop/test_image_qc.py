"""The expert's whole-image QC and the exports, driven as an admin and a reviewer drive them: stitch makes one QC
task per image, the reviewer edits it through the API and resolves its conflicts, approves it; only then does the
image enter `cellloop dataset` and `cellloop export`; re-stitching after more crops are approved keeps the expert's
edits."""
from __future__ import annotations

import csv

import numpy as np
import ome_types
import pytest
import tifffile
from sqlalchemy import select

from backend.cli import main
from backend.config import Config
from backend.store.db import make_engine, make_sessionmaker
from backend.store.models import Batch, ImageQC, Task, TaskState, User
from backend.store.storage import storage_from_url
from backend.tasks import Actor, TaskService
from backend.web.app import create_app
from pipeline import io
from pipeline.synthetic import make_tissue

PASSWORD = "correct horse battery"
# the expert paints this disc (a new cell) into the whole image during QC
DISC = (60, 60, 7)


@pytest.fixture
def instance(tmp_path, monkeypatch):
    folder = tmp_path / "instance"
    monkeypatch.setenv("CELLLOOP_INSTANCE_DIR", str(folder))
    monkeypatch.delenv("CELLLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("CELLLOOP_STORAGE_URL", raising=False)
    return folder


def split_cell_in_overlap(crop_labels, truth, b0, b1):
    """Give the largest cell of the zone two crops share two ids in the first crop only: stitch lists it."""
    zone = (max(b0[0], b1[0]), max(b0[1], b1[1]), min(b0[2], b1[2]), min(b0[3], b1[3]))
    z = truth[zone[0]:zone[2], zone[1]:zone[3], 0]
    ids, counts = np.unique(z[z > 0], return_counts=True)
    cell = ids[np.argmax(counts)]
    mask = crop_labels[..., 0] == cell
    cols = np.nonzero(mask.any(0))[0]
    part = mask.copy()
    part[:, cols[0] + (cols[-1] - cols[0]) // 3:] = False
    crop_labels[..., 0][part] = truth.max() + 1
    return crop_labels


def make_project(tmp_path, capsys):
    X, y = make_tissue((256, 256), seed=40)
    tifffile.imwrite(tmp_path / "img0.ome.tif", np.moveaxis(X, -1, 0), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45"]}})
    assert main(["db", "upgrade"]) == 0
    assert main(["ingest", str(tmp_path / "img0.ome.tif"), "--project", "syn", "--pixel-size", "0.5",
                 "--tissue", "synthetic", "--platform", "simulated"]) == 0
    assert main(["users", "create", "rev", "--role", "reviewer", "--password", PASSWORD]) == 0
    assert main(["batch", "create", "b1", "--project", "syn", "--images", "img0", "--size", "160",
                 "--overlap", "32"]) == 0
    assert main(["prelabel", "--batch", "b1", "--model", "none"]) == 0
    capsys.readouterr()
    config = Config.from_env()
    session = make_sessionmaker(make_engine(config.database_url))()
    return config, session, storage_from_url(config.storage_url), X, y


def approve_crop(session, storage, task, labels):
    svc = TaskService(session, storage)
    worker = Actor(ref="w1")
    svc.open(task, worker)
    svc.replace_labels(task, worker, task.revision, labels)
    svc.submit(task, worker, task.revision)
    reviewer = Actor(user=session.scalar(select(User).where(User.username == "rev")))
    svc.review(task, reviewer, "approve")


def login(client):
    csrf = client.get("/api/auth/me").get_json()["csrf_token"]
    resp = client.post("/api/auth/login", json={"username": "rev", "password": PASSWORD},
                       headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 200
    return resp.get_json()["csrf_token"]


def test_stitch_qc_edit_approve_dataset_restitch_keeps_the_experts_edits(instance, tmp_path, capsys):
    round_trip(tmp_path, capsys)


def test_the_qc_round_trip_on_postgres(instance, tmp_path, capsys, pg_url, monkeypatch):
    monkeypatch.setenv("CELLLOOP_DATABASE_URL", pg_url)
    round_trip(tmp_path, capsys)


def round_trip(tmp_path, capsys):
    config, session, storage, X, truth = make_project(tmp_path, capsys)
    crops = list(session.scalars(select(Task).join(Batch).where(Batch.name == "b1").order_by(Task.id)))
    boxes = [t.box for t in crops]
    first = truth[boxes[0][0]:boxes[0][2], boxes[0][1]:boxes[0][3]].copy()
    approve_crop(session, storage, crops[0], split_cell_in_overlap(first, truth, boxes[0], boxes[1]))
    b = boxes[1]
    approve_crop(session, storage, crops[1], truth[b[0]:b[2], b[1]:b[3]])

    assert main(["stitch", "--batch", "b1"]) == 0
    out = capsys.readouterr().out
    assert "image QC task" in out and "created" in out
    session.expire_all()
    qc = session.scalar(select(ImageQC))
    task = session.get(Task, qc.task_id)
    assert (task.kind, task.state, task.box) == ("qc", TaskState.submitted, (0, 0, 256, 256))
    assert len(qc.conflicts) >= 1 and not any(c["resolved"] for c in qc.conflicts)
    assert sorted(map(tuple, qc.seams)) == sorted(boxes[:2])

    # not QC'd yet: neither dataset nor export take it, and they say what to do
    assert main(["dataset", "--project", "syn", "--out", str(tmp_path / "d.npz"), "--tile", "128"]) == 2
    assert "QC" in capsys.readouterr().err
    assert main(["export", "--project", "syn", "--format", "csv", "--out", str(tmp_path / "ex")]) == 2
    err = capsys.readouterr().err
    assert "no QC-approved image" in err and "--include-unreviewed" in err
    assert main(["cycle", "--batch", "b1", "--tile", "128"]) == 2  # the cycle trains on QC'd images only
    assert "waiting for the expert's QC" in capsys.readouterr().err
    session.expire_all()
    assert session.get(Task, task.id).revision == 0  # stitching again with nothing new changed nothing

    client = create_app(config).test_client()
    csrf = login(client)
    queue = client.get("/api/review/tasks?kind=qc").get_json()
    assert [t["id"] for t in queue["tasks"]] == [task.id] and queue["tasks"][0]["image"] == "img0"
    assert queue["counts"] == {"crop": 0, "qc": 1}
    info = client.get(f"/api/review/tasks/{task.id}/qc").get_json()
    assert info["counts"]["open"] == len(qc.conflicts) and info["shape"] == [256, 256]
    resp = client.post(f"/api/review/tasks/{task.id}/qc/conflicts/0", json={"resolved": True},
                       headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 200 and resp.get_json()["counts"]["resolved"] == 1
    assert client.post(f"/api/review/tasks/{task.id}/qc/conflicts/0", json={"resolved": "yes"},
                       headers={"X-CSRF-Token": csrf}).status_code == 400
    assert client.post(f"/api/review/tasks/{task.id}/qc/conflicts/99", json={"resolved": True},
                       headers={"X-CSRF-Token": csrf}).status_code == 404
    assert client.get(f"/api/review/tasks/{crops[0].id}/qc").status_code == 404  # a crop is no QC task

    assert client.post(f"/api/review/tasks/{task.id}/start", headers={"X-CSRF-Token": csrf}).status_code == 200
    cy, cx, r = DISC
    new_id = int(truth.max()) + 50
    resp = client.post(f"/api/review/tasks/{task.id}/edit", headers={"X-CSRF-Token": csrf},
                       json={"base_revision": 0, "tool": "paint",
                             "params": {"layer": 0, "points": [[cy, cx]], "radius": r, "label": new_id,
                                        "overwrite": True}})
    assert resp.status_code == 200, resp.get_json()
    assert client.post(f"/api/review/tasks/{task.id}/approve", json={},
                       headers={"X-CSRF-Token": csrf}).status_code == 200
    session.expire_all()
    svc = TaskService(session, storage)
    expert = svc.labels(task)
    painted = expert[..., 0] == new_id
    assert painted.sum() > 100

    # approved: the dataset takes the expert's labels
    assert main(["dataset", "--project", "syn", "--out", str(tmp_path / "d.npz"), "--tile", "128"]) == 0
    data = io.load_dataset(tmp_path / "d.npz")
    assert all(m["qc"] == "approved" and m["include_unreviewed"] is False for m in data["meta"])
    tile = [i for i, m in enumerate(data["meta"]) if m["box"][:2] == [0, 0]]
    assert tile, [m["box"] for m in data["meta"]]  # the painted disc lies in the tile at (0, 0)
    assert (data["y"][tile[0]][..., 0] == new_id).sum() == painted[0:128, 0:128].sum()

    # more crops approved, stitched again: the crowd's new work comes in, the expert's disc stays
    for t in crops[2:]:
        b = t.box
        approve_crop(session, storage, t, truth[b[0]:b[2], b[1]:b[3]])
    assert main(["stitch", "--batch", "b1"]) == 0
    assert "refreshed" in capsys.readouterr().out
    session.expire_all()
    task = session.get(Task, task.id)
    after = TaskService(session, storage).labels(task)
    assert (after[..., 0][painted] == new_id).all() and (after[..., 0] == new_id).sum() == painted.sum()
    assert task.state == TaskState.submitted  # changed by new crowd work: back to the expert
    qc = session.scalar(select(ImageQC))
    assert len(qc.seams) == 4
    # the new crops are in: the lower right crop, away from the disc, equals the truth's partition there
    from pipeline.stitch import same_partition
    assert same_partition(after[170:256, 170:256, 0], truth[170:256, 170:256, 0])
    # nothing new stitched in: the QC labels and verdict stay as they are
    svc = TaskService(session, storage)
    reviewer = Actor(user=session.scalar(select(User).where(User.username == "rev")))
    svc.review(task, reviewer, "approve")
    assert main(["stitch", "--batch", "b1"]) == 0
    assert "unchanged" in capsys.readouterr().out
    session.expire_all()
    assert session.get(Task, task.id).state == TaskState.approved


def test_exports_of_a_qc_approved_image(instance, tmp_path, capsys):
    config, session, storage, X, truth = make_project(tmp_path, capsys)
    for t in session.scalars(select(Task).join(Batch).where(Batch.name == "b1").order_by(Task.id)).all():
        b = t.box
        approve_crop(session, storage, t, truth[b[0]:b[2], b[1]:b[3]])
    assert main(["stitch", "--batch", "b1"]) == 0
    session.expire_all()
    qc_task = session.get(Task, session.scalar(select(ImageQC)).task_id)
    # unreviewed images leave only when asked, and say so
    assert main(["export", "--project", "syn", "--format", "npz", "--out", str(tmp_path / "u"),
                 "--include-unreviewed"]) == 0
    assert "not QC-approved" in capsys.readouterr().out
    reviewer = Actor(user=session.scalar(select(User).where(User.username == "rev")))
    TaskService(session, storage).review(qc_task, reviewer, "approve")
    labels = TaskService(session, storage).labels(qc_task)
    assert main(["export", "--project", "syn", "--images", "nope", "--format", "csv", "--out", str(tmp_path)]) == 2
    assert "no image named 'nope'" in capsys.readouterr().err

    out = tmp_path / "export"
    assert main(["export", "--project", "syn", "--format", "ome-tiff", "--out", str(out)]) == 0
    path = out / "img0.ome.tif"
    with tifffile.TiffFile(path) as tif:
        ome = ome_types.from_xml(tif.ome_metadata, validate=True)  # against the OME schema
        stored_labels, stored_image = tif.series[0].asarray(), tif.series[1].asarray()
    assert [c.name for c in ome.images[0].pixels.channels] == ["whole-cell", "nuclear"]
    assert [c.name for c in ome.images[1].pixels.channels] == ["DAPI", "CD45"]
    assert ome.images[0].pixels.physical_size_x == 0.5 and ome.images[0].pixels.physical_size_y == 0.5
    assert stored_labels.dtype == np.uint16
    np.testing.assert_array_equal(np.moveaxis(stored_labels, 0, -1), labels)
    np.testing.assert_array_equal(np.moveaxis(stored_image, 0, -1), X)

    assert main(["export", "--project", "syn", "--format", "npz", "--out", str(out)]) == 0
    npz = np.load(out / "syn.npz")
    assert npz["X"].shape == (1, 256, 256, 2) and npz["y"].dtype == np.int32
    np.testing.assert_array_equal(npz["y"][0], labels)
    assert list(npz["tissue_list"]) == ["synthetic"] and list(npz["platform_list"]) == ["simulated"]
    loaded = io.load_dataset(out / "syn.npz")
    assert loaded["meta"][0]["image"] == "img0" and loaded["meta"][0]["qc"] == "approved"

    assert main(["export", "--project", "syn", "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "syn_cells.csv")))
    for layer, name in enumerate(("whole-cell", "nuclear")):
        mine = {int(r["cell_id"]): r for r in rows if r["layer"] == name}
        ids = set(np.unique(labels[..., layer]).tolist()) - {0}
        assert set(mine) == ids
        for cell in list(ids)[:10]:
            mask = labels[..., layer] == cell
            rr, cc = np.nonzero(mask)
            r = mine[cell]
            assert int(r["area_px"]) == mask.sum()
            assert float(r["area_um2"]) == pytest.approx(mask.sum() * 0.25, rel=1e-5)
            assert float(r["centroid_y"]) == pytest.approx(rr.mean(), rel=1e-5)
            assert float(r["centroid_x"]) == pytest.approx(cc.mean(), rel=1e-5)
            assert [int(r[k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")] == \
                [rr.min(), cc.min(), rr.max() + 1, cc.max() + 1]
            assert float(r["mean_DAPI"]) == pytest.approx(X[..., 0][mask].mean(), rel=1e-5)
            assert float(r["mean_CD45"]) == pytest.approx(X[..., 1][mask].mean(), rel=1e-5)

"""Effort is counted per distinct cell of the image: a cell that two overlapping crops show counts once, in
`status` and in the simulated annotator; the per-crop figure stays available under its own name."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from backend import loop
from backend.store.models import Task
from backend.store.projects import add_image, create_project
from backend.tasks import Actor, TaskService
from pipeline import simulate
from pipeline.stitch import relabel_crop
from pipeline.synthetic import make_tissue


def test_status_counts_each_cell_of_the_image_once(instance):
    config, session, storage = instance
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    X, y = make_tissue((200, 200), seed=7)
    add_image(session, storage, project, X, name="im")
    session.commit()
    batch, made = loop.create_batch(session, storage, project, "b", all_new=True, size=96, overlap=40)
    assert made > 4
    svc = TaskService(session, storage)
    tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)))
    for i, task in enumerate(tasks):
        # each crop annotated exactly as the truth (its own ids, as an annotator's crop has)
        assert svc.write_prelabel(task, relabel_crop(y[task.y0:task.y1, task.x0:task.x1]), "truth")
        actor = Actor(ref=f"w{i}")
        svc.open(task, actor)
        labels = svc.labels(task)[..., 0]
        spot = [int(v) for v in np.argwhere(labels == 0)[0]]
        svc.edit(task, actor, 0, "paint", {"layer": 0, "points": [spot], "radius": 1, "label": int(labels.max()) + 1})
        svc.undo(task, actor, 1)
        if i == 0:  # one crop's nuclear layer corrected too
            svc.edit(task, actor, 2, "paint", {"layer": 1, "points": [spot], "radius": 1, "label": 1})
        svc.submit(task, actor, task.revision)
    status = loop.batch_status(session, storage, batch)
    true_cells = len(np.unique(y[..., 0])) - 1
    per_crop = sum(len(np.unique(y[t.y0:t.y1, t.x0:t.x1, 0])) - 1 for t in tasks)
    assert status["submitted_cells"] == true_cells
    assert status["submitted_crop_cells"] == per_crop > 1.5 * true_cells
    assert status["edits"] == 2 * len(tasks) + 1
    assert status["nuclear_corrected_crops"] == 1  # the others' nuclear layer is the uncorrected prelabel
    assert status["edits_per_cell"] == round((2 * len(tasks) + 1) / true_cells, 3)


def test_the_simulated_annotator_counts_distinct_cells():
    _, y = make_tissue((200, 200), seed=8)
    rows = [{"image": "im", "y0": y0, "x0": x0, "y1": y0 + 100, "x1": x0 + 100}
            for y0 in (0, 60) for x0 in (0, 60, 100)]
    distinct = simulate.distinct_cells(rows, {"im": y})
    assert distinct == len(np.unique(y[:160, :, 0])) - 1
    per_crop = sum(len(np.unique(y[r["y0"]:r["y1"], r["x0"]:r["x1"], 0])) - 1 for r in rows)
    assert per_crop > 1.5 * distinct
    assert simulate.distinct_cells(rows, {"im": y}, layers=(0, 1)) == distinct + len(np.unique(y[:160, :, 1])) - 1
    effort = simulate.Effort(cells=distinct, crop_cells=per_crop)
    effort.ops["paint"] = 50
    figures = effort.as_dict()
    assert figures["ops_per_100_cells"] == round(5000 / distinct, 1)
    assert figures["ops_per_100_crop_cells"] == round(5000 / per_crop, 1) < figures["ops_per_100_cells"]

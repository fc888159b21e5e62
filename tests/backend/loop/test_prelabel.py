"""Prelabelling a batch: the Dask path (a LocalCluster of 2 worker processes) gives the same labels as the
serial one; re-running skips finished crops and never overwrites a crop someone has touched."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from backend import loop
from backend.store.models import Task, TaskState
from backend.store.projects import add_image, create_project
from backend.tasks import Actor, TaskService
from pipeline.synthetic import make_tissue


@pytest.fixture
def project_world(instance):
    config, session, storage = instance
    project = create_project(session, name="p", channel_names=["CD45", "DAPI"])  # nuclear second: guessed by name
    for i in range(3):
        X, _ = make_tissue((180, 200 + 10 * i), seed=i)
        add_image(session, storage, project, X[..., ::-1], name=f"im{i}")
    session.commit()
    return config, session, storage, project


def _crop_labels(session, storage, batch):
    svc = TaskService(session, storage)
    tasks = session.scalars(select(Task).where(Task.batch_id == batch.id)).all()
    return {(t.image_id, t.box): svc.labels(t) for t in tasks}


def test_dask_local_cluster_gives_the_serial_labels(project_world):
    config, session, storage, project = project_world
    serial, _ = loop.create_batch(session, storage, project, "serial", all_new=True, size=96, overlap=24)
    parallel, _ = loop.create_batch(session, storage, project, "parallel", images=list(project.images), size=96,
                                    overlap=24)
    assert loop.prelabel_batch(session, storage, config, serial, "baseline")["images"] == 3
    assert loop.prelabel_batch(session, storage, config, parallel, "baseline", workers=2)["images"] == 3
    a, b = _crop_labels(session, storage, serial), _crop_labels(session, storage, parallel)
    assert a.keys() == b.keys() and len(a) == 3 * 9
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sum(int(v.any()) for v in a.values()) > 20  # the baseline found cells: DAPI was picked as nuclear


def test_rerun_skips_done_crops_and_leaves_touched_ones_alone(project_world):
    config, session, storage, project = project_world
    batch, made = loop.create_batch(session, storage, project, "b", all_new=True, size=128, overlap=32)
    assert made == 3 * 4 and loop.create_batch(session, storage, project, "b", all_new=True, size=128,
                                               overlap=32)[1] == 0
    first = loop.prelabel_batch(session, storage, config, batch, "baseline")
    assert first["crops"] == 12 and loop.prelabel_batch(session, storage, config, batch, "baseline")["crops"] == 0
    svc = TaskService(session, storage)
    task = session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)).first()
    svc.edit(task, Actor(ref="worker-1"), 0, "paint", {"points": [[5, 5]], "radius": 3, "label": 999})
    edited = svc.labels(task)
    again = loop.prelabel_batch(session, storage, config, batch, "none")
    assert again == {"model": "none", "images": 0, "crops": 11, "left_alone": 1, "touched": [task.id]}
    session.expire_all()
    assert np.array_equal(svc.labels(task), edited)
    others = session.scalars(select(Task).where(Task.batch_id == batch.id, Task.id != task.id)).all()
    assert all(t.state is TaskState.new and not svc.labels(t).any() for t in others)
    with pytest.raises(loop.LoopError, match="no model version"):
        loop.prelabel_batch(session, storage, config, batch, "p-v9")
    with pytest.raises(loop.LoopError, match="exists with size"):
        loop.create_batch(session, storage, project, "b", all_new=True, size=270, overlap=32)

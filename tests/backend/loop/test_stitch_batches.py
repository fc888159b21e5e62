"""Stitching approved crops of several batches: the newer batch's crop wins on the pixels both cover (a
re-annotation is never thrown away), and conflicts name the tasks they concern."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from backend import loop
from backend.cli.admin_commands import create_user
from backend.store.models import Task
from backend.store.projects import add_image, create_project
from backend.tasks import Actor, TaskService
from pipeline.stitch import same_partition


def _approve_all(session, storage, batch, labels_of, reviewer):
    svc = TaskService(session, storage)
    for task in session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)):
        assert svc.write_prelabel(task, labels_of(task), "test")
        actor = Actor(ref="w")
        svc.open(task, actor)
        svc.submit(task, actor, 0)
        svc.review(task, Actor(user=reviewer), "approve")


def test_a_later_batch_wins_over_an_earlier_one_on_the_same_box(instance):
    config, session, storage = instance
    reviewer = create_user(session, "rev", "correct horse battery", "reviewer")
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    image = add_image(session, storage, project, np.random.default_rng(0).random((96, 96, 2), np.float32), name="im")
    session.commit()
    old = np.zeros((96, 96, 2), np.int32)
    old[10:40, 10:40, 0] = 1
    old[60:80, 60:80, 0] = 2
    new = np.zeros((96, 96, 2), np.int32)
    new[10:25, 10:40, 0] = 1  # the re-annotation split the first cell, and deleted the second
    new[25:40, 10:40, 0] = 2
    first, _ = loop.create_batch(session, storage, project, "first", images=[image], size=96, overlap=0)
    _approve_all(session, storage, first, lambda t: old, reviewer)
    second, _ = loop.create_batch(session, storage, project, "second", images=[image], size=96, overlap=0)
    _approve_all(session, storage, second, lambda t: new, reviewer)
    summary = loop.stitch_batch(session, storage, second)
    labels, coverage = loop.stitched_labels(storage, image)
    assert coverage.all() and same_partition(labels[..., 0], new[..., 0])
    assert summary[0]["cells"] == 2
    tasks = {t.id for t in session.scalars(select(Task))}
    assert all(set(c["tasks"]) <= tasks and len(c["tasks"]) == len(c["crops"]) for c in summary[0]["conflict_list"])

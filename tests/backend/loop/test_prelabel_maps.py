"""Prelabel with a Mesmer model keeps each crop's model maps beside its first revision, named by the model version;
the baseline keeps none (and clears what a model left), and a crop someone touched keeps its maps."""
from __future__ import annotations

import numpy as np
from sqlalchemy import select

from backend import loop
from backend.edits import apply_edit
from backend.store.arrays import decode_array
from backend.store.models import Task
from backend.store.projects import add_image, create_project
from backend.tasks import Actor, TaskService
from backend.tasks.maps import NOISE_FLOOR, load_maps
from pipeline.model.maps import maps_from_outputs
from pipeline.model.predict import Mesmer
from pipeline.model.starter import starter_model_dir
from pipeline.synthetic import make_tissue


def test_prelabel_stores_each_crops_maps_and_baseline_clears_them(instance):
    config, session, storage = instance
    project = create_project(session, name="p", channel_names=["DAPI", "CD45"])
    X, _ = make_tissue((150, 190), seed=4)
    image = add_image(session, storage, project, X, name="im0", pixel_size_um=0.5)
    session.commit()
    batch, made = loop.create_batch(session, storage, project, "b", all_new=True, size=96, overlap=24)
    assert made == 6
    assert starter_model_dir() is not None, "the starter model ships with the package"
    result = loop.prelabel_batch(session, storage, config, batch, "current")
    assert result["model"] == "starter" and result["crops"] == 6

    # what the model gives for the whole image, cut per crop: exactly what each task keeps
    mesmer = Mesmer(starter_model_dir())
    labels = mesmer.predict(X[..., :2].astype(np.float32), image_mpp=0.5)
    whole = maps_from_outputs(mesmer.last_outputs, labels.shape[:2])
    whole = np.where(whole < NOISE_FLOOR, 0, whole)  # background noise is stored as 0
    tasks = session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)).all()
    sizes = []
    for task in tasks:
        assert task.maps_model == "starter" and "/maps/starter-" in task.maps_key
        maps = load_maps(storage, task)
        assert maps.dtype == np.uint8 and maps.shape == task.shape + (4,)
        assert np.array_equal(maps, whole[task.y0:task.y1, task.x0:task.x1])
        sizes.append(len(storage.get(task.maps_key)))
    assert whole[..., 1].max() > 128  # the interior map sees cells
    # the whole image's temporary labels and maps are gone: only the crops' own maps stay
    assert not [k for k in storage.list(f"projects/{project.id}/images/{image.id}/prelabels")]

    # an annotator uses the maps: an assist click on a cell the model sees
    svc = TaskService(session, storage)
    task = tasks[0]
    crop_labels = svc.labels(task)
    ys, xs = np.nonzero(crop_labels[..., 0])
    point = [int(ys[len(ys) // 2]), int(xs[len(xs) // 2])]
    rev, patch = svc.edit(task, Actor(ref="worker-1"), 0, "assist_click", {"point": point})
    assert rev.number == 1 and not patch.is_empty
    assert patch == apply_edit(crop_labels, None, "assist_click", {"point": point}, maps=load_maps(storage, task))

    # the baseline re-prelabels the untouched crops: they lose their maps, the touched one keeps its own
    kept = task.maps_key
    again = loop.prelabel_batch(session, storage, config, batch, "baseline")
    assert again["crops"] == 5 and again["left_alone"] == 1
    session.expire_all()
    for t in session.scalars(select(Task).where(Task.batch_id == batch.id)).all():
        if t.id == task.id:
            assert t.maps_key == kept and storage.exists(kept)
        else:
            assert t.maps_key is None and t.maps_model is None and load_maps(storage, t) is None
    assert sum(sizes) / len(sizes) < 96 * 96 * 4  # compressed below the raw uint8 size
    decode_array(storage.get(kept))  # still a readable array

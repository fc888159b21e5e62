"""Batches: cut images into crop tasks, publish their links, and count the work done on them."""
from __future__ import annotations

import sys
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.loop.common import LoopError, batch_images, count_cells, progress
from backend.store.models import Batch, Image, Project, Revision, Task, TaskState, utcnow
from backend.store.slides import StoredSlide
from backend.store.storage import Storage, WriteLog
from backend.tasks.links import sign_task_token

EDIT_REVISIONS = ("edit", "undo", "redo", "replace")


def create_batch(session: Session, storage: Storage, project: Project, name: str, *,
                 images: list[Image] | None = None, all_new: bool = False, size: int = 270,
                 overlap: int = 40) -> tuple[Batch, int]:
    """Cut ``images`` (or every image not yet in a batch) into crops covering each image whole, one task per crop.
    Returns the batch and how many tasks this call made (0 when it had run to the end before)."""
    from pipeline.crop import crop_boxes

    from backend.tasks import TaskService

    if size < 32 or not 0 <= overlap < size // 2:
        raise LoopError(f"need --size >= 32 and 0 <= --overlap < size/2, got size {size}, overlap {overlap}")
    batch = session.scalar(select(Batch).where(Batch.project_id == project.id, Batch.name == name))
    if batch is not None and (batch.crop_size, batch.overlap) != (size, overlap):
        raise LoopError(f"batch {name!r} exists with size {batch.crop_size}, overlap {batch.overlap}")
    if batch is not None and batch.published_at is not None:
        chosen = set(i.id for i in (images or []))
        if chosen - {i.id for i in batch_images(session, batch)}:
            raise LoopError(f"batch {name!r} is published; make a new batch for more images")
    if images is None:
        if not all_new:
            raise LoopError("name the images (--images) or take every image not yet in a batch (--all-new)")
        in_batches = select(Task.image_id).where(Task.image_id.is_not(None)).distinct()
        images = list(session.scalars(select(Image).where(Image.project_id == project.id,
                                                         Image.id.not_in(in_batches)).order_by(Image.id)))
        if batch is not None:
            images = batch_images(session, batch) + images
    if not images:
        raise LoopError(f"project {project.name!r} has no images for a new batch")
    for image in images:
        if image.project_id != project.id:
            raise LoopError(f"image {image.name!r} is not in project {project.name!r}")
    if batch is None:
        batch = Batch(project=project, name=name, crop_size=size, overlap=overlap)
        session.add(batch)
        session.commit()
    made = 0
    bar = progress(len(images), f"batch {name}")
    for image in images:
        if session.scalar(select(func.count(Task.id)).where(Task.batch_id == batch.id, Task.image_id == image.id)):
            bar.update(1)
            continue  # cut by an earlier run
        # region by region: a slide stored in chunks decodes only the chunks under each crop, never whole
        pixels = StoredSlide.of("", image, storage)
        # one image at a time: a crash leaves whole images only, and takes back the crops it had stored
        writes = WriteLog(storage)
        svc = TaskService(session, writes)
        try:
            for box in crop_boxes((image.height, image.width), size, overlap):
                y0, x0, y1, x1 = box
                task = svc.create_task(batch, box, pixels.read(y0, y1, x0, x1))
                task.image_id = image.id
                made += 1
            session.commit()
        except BaseException:
            session.rollback()
            writes.take_back()
            raise
        bar.update(1)
    bar.close()
    return batch, made


def publish_batch(session: Session, config, batch: Batch, out=None, base_url: str | None = None) -> int:
    """Task links as CSV (one row per task with its iframe URL), the format crowd platforms import."""
    if batch.prelabel is None:
        raise LoopError(f"batch {batch.name!r} is not prelabelled yet: run `cellloop prelabel --batch "
                        f"{batch.name}` (use --model none for empty crops)")
    tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id).order_by(Task.id)))
    names = {i.id: i.name for i in batch_images(session, batch)}
    base = (base_url or config.base_url).rstrip("/")
    print("task_id,image,y0,x0,y1,x1,state,url", file=out or sys.stdout)
    for t in tasks:
        token = sign_task_token(config.secret_key, t.id, t.token_nonce)
        print(f"{t.id},{names.get(t.image_id, '')},{t.y0},{t.x0},{t.y1},{t.x1},{t.state.value},"
              f"{base}/task/{token}", file=out or sys.stdout)
    if batch.published_at is None:
        batch.published_at = utcnow()
        session.commit()
    return len(tasks)


def batch_status(session: Session, storage: Storage, batch: Batch) -> dict:
    """Counts per state; edits, seconds and cells of the submitted work; throughput. Cells are distinct cells of the
    images (the submitted crops of each image stitched; a cell two overlapping crops show counts once), so
    ``edits_per_cell`` and ``seconds_per_cell`` are per distinct cell; ``submitted_crop_cells`` counts per crop."""
    from backend.tasks import TaskService

    tasks = list(session.scalars(select(Task).where(Task.batch_id == batch.id)))
    states = Counter(t.state.value for t in tasks)
    done = [t for t in tasks if t.state in (TaskState.submitted, TaskState.in_review, TaskState.approved)]
    svc = TaskService(session, storage)
    from pipeline.stitch import stitch_crops

    crops = {t.id: svc.labels(t) for t in done}
    crop_cells = sum(count_cells(labels) for labels in crops.values())
    cells = 0
    for image_id in sorted({t.image_id for t in done if t.image_id is not None}):
        of_image = [t for t in done if t.image_id == image_id]
        image = of_image[0].source_image
        cells += count_cells(stitch_crops((image.height, image.width),
                                          [(t.box, crops[t.id]) for t in of_image]).labels)
    cells += sum(count_cells(crops[t.id]) for t in done if t.image_id is None)  # crops of no known image
    edits = session.scalar(select(func.count(Revision.id)).where(
        Revision.task_id.in_([t.id for t in done]), Revision.action.in_(EDIT_REVISIONS))) if done else 0
    # which crops had their nuclear layer (1) corrected at all: training on the others learns the prelabel's nuclei
    nuclear_edited = {r.task_id for r in session.scalars(select(Revision).where(
        Revision.task_id.in_([t.id for t in done]), Revision.action == "edit"))
        if (r.params or {}).get("layer") == 1} if done else set()
    seconds = float(sum(t.time_open_s or 0.0 for t in done))
    from backend.tasks.transitions import aware  # SQLite hands back naive times, fresh writes are aware

    starts = [aware(t.assigned_at) for t in done if t.assigned_at] or [aware(t.created_at) for t in done]
    ends = [aware(t.submitted_at) for t in done if t.submitted_at]
    hours = ((max(ends) - min(starts)).total_seconds() / 3600) if ends and starts else 0.0
    return {
        "batch": batch.name, "project": batch.project.name, "prelabel": batch.prelabel, "tasks": len(tasks),
        "states": dict(sorted(states.items())), "submitted_cells": cells, "submitted_crop_cells": crop_cells,
        "edits": int(edits or 0), "nuclear_corrected_crops": len(nuclear_edited),
        "seconds": round(seconds, 1),
        "edits_per_cell": round(edits / cells, 3) if cells else None,
        "seconds_per_cell": round(seconds / cells, 2) if cells else None,
        "tasks_per_hour": round(len(done) / hours, 1) if hours > 0 else None,
    }

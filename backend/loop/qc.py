"""Whole-image QC: after stitching, one QC task per stitched image for an expert reviewer (the whole image in the
same editor), its conflicts and crop seams; which images count as reviewed for datasets and exports.

A QC task is a task of kind "qc" covering the whole image, in the project's "image-qc" batch, waiting in the
reviewer queue (state `submitted`). Re-stitching refreshes it: the new crowd stitch comes in, the expert's QC edits
(what differs from the stitch the QC started from) stay on top, and a task whose labels changed waits for QC again.
An image whose longer side is above ``chunked.CHUNKED_ABOVE`` gets a QC task stored in chunks like a big crop task
(its channels once as a chunk pyramid beside the image, each labels snapshot a manifest), so the reviewer's editor
opens it by region instead of downloading the whole image.
"""
from __future__ import annotations

import secrets

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.loop.common import LoopError
from backend.store.arrays import decode_array, encode_array
from backend.store.chunks import CHUNK, ChunkGrid
from backend.store.models import Batch, Image, ImageQC, Project, Revision, Task, TaskState, utcnow
from backend.store.storage import Storage
from backend.tasks import chunked

QC_BATCH = "image-qc"
QC_KIND = "qc"
CROP_KIND = "crop"


def qc_batch(session: Session, project: Project) -> Batch:
    batch = session.scalar(select(Batch).where(Batch.project_id == project.id, Batch.name == QC_BATCH))
    if batch is None:
        batch = Batch(project=project, name=QC_BATCH)
        session.add(batch)
        session.flush()
    return batch


def _conflict_key(c: dict) -> tuple:
    return (c.get("kind"), c.get("y"), c.get("x"), tuple(c.get("cells") or ()))


def _conflicts(new: list[dict], old: list[dict]) -> list[dict]:
    """The new conflict list, numbered; a conflict the expert already resolved stays resolved."""
    resolved = {_conflict_key(c) for c in old if c.get("resolved")}
    return [{**c, "id": i, "resolved": _conflict_key(c) in resolved} for i, c in enumerate(new)]


def _labels_key(task: Task, number: int) -> str:
    ext = "chunks.json" if task.chunk_size is not None else "npy.gz"
    return f"projects/{task.batch.project_id}/tasks/{task.id}/labels/{number:06d}-{secrets.token_hex(6)}.{ext}"


def _qc_chunk_size(storage: Storage, image: Image) -> int | None:
    """CHUNK for an image big enough to open by region (its channels are then cut into chunks, once), else None.
    A slide (stored in tiles of its own, image_key a folder) keeps the whole-array QC task."""
    if max(image.height, image.width) <= chunked.CHUNKED_ABOVE or image.image_key.endswith("/"):
        return None
    pixels = decode_array(storage.get(image.image_key), max_pixels=None)
    chunked.write_image_chunks(storage, image.image_key, pixels, ChunkGrid(pixels.shape, CHUNK))
    return CHUNK


def _write_labels(storage: Storage, task: Task, key: str, labels: np.ndarray) -> list[str]:
    """A QC labels snapshot: a chunk manifest for a chunked task, one array otherwise; returns the keys written."""
    if task.chunk_size is None:
        storage.put(key, encode_array(labels))
        return [key]
    return chunked.write_labels_snapshot(storage, key, labels, task.chunk_size)


def refresh_qc(session: Session, storage: Storage, image: Image, labels: np.ndarray, conflicts: list[dict],
               seams: list, *, source: str) -> dict:
    """Make or refresh the image's QC task after ``image`` was stitched into ``labels`` (stored at
    ``image.labels_key``). Returns what happened: created / refreshed (with the expert's pixels kept) / unchanged."""
    from pipeline.qc import keep_expert_edits

    from backend.tasks import TaskService
    from backend.tasks.transitions import conditional_update

    row = session.scalar(select(ImageQC).where(ImageQC.image_id == image.id))
    if row is None:
        task = Task(batch=qc_batch(session, image.project), image_id=image.id, y0=0, x0=0, y1=image.height,
                    x1=image.width, state=TaskState.submitted, image_key=image.image_key, revision=0, kind=QC_KIND,
                    submitted_at=utcnow(), chunk_size=_qc_chunk_size(storage, image))
        session.add(task)
        session.flush()
        key = _labels_key(task, 0)
        _write_labels(storage, task, key, labels)
        session.add(Revision(task=task, number=0, action="stitch", params={"stitch": source}, labels_key=key,
                             author_ref="system"))
        session.add(ImageQC(image_id=image.id, task_id=task.id, base_labels_key=image.labels_key,
                            conflicts=_conflicts(conflicts, []), seams=seams, stitched_at=utcnow()))
        session.commit()
        return {"qc_task": task.id, "qc": "created", "expert_pixels_kept": 0}
    task = session.get(Task, row.task_id)
    svc = TaskService(session, storage)
    outcome = "unchanged"
    kept = 0
    for _ in range(5):  # an expert editing at this moment moves the revision on: merge again on top of that
        session.refresh(task)
        current = svc.labels(task)
        base = decode_array(storage.get(row.base_labels_key), max_pixels=None)
        merged, kept = keep_expert_edits(labels, base, current)
        if np.array_equal(merged, current):
            break
        number = task.revision + 1
        key = _labels_key(task, number)
        written = _write_labels(storage, task, key, merged)
        # a changed image waits for the expert again, whatever its verdict was
        if conditional_update(session, task, [Task.revision == task.revision],
                              {"revision": number, "state": TaskState.submitted, "submitted_at": utcnow()}):
            # "replace": undo stops here, as after an uploaded replacement
            session.add(Revision(task_id=task.id, number=number, action="replace", labels_key=key,
                                 params={"restitch": source, "expert_pixels_kept": kept}, author_ref="system"))
            outcome = "refreshed"
            break
        session.rollback()
        for k in written:
            storage.delete(k)
    else:
        raise LoopError(f"image {image.name!r}: its QC task kept changing while stitching; run stitch again")
    row.base_labels_key = image.labels_key
    row.conflicts = _conflicts(conflicts, row.conflicts or [])
    row.seams = seams
    row.stitched_at = utcnow()
    session.commit()
    return {"qc_task": task.id, "qc": outcome, "expert_pixels_kept": kept}


def qc_of(session: Session, image: Image) -> ImageQC | None:
    return session.scalar(select(ImageQC).where(ImageQC.image_id == image.id))


def qc_state(session: Session, image: Image) -> str:
    """'approved', 'rejected', 'waiting' (QC task not yet decided) or 'none' (never stitched)."""
    row = qc_of(session, image)
    if row is None:
        return "none"
    state = session.get(Task, row.task_id).state
    return {TaskState.approved: "approved", TaskState.rejected: "rejected"}.get(state, "waiting")


def reviewed_images(session: Session, project: Project, *, include_unreviewed: bool = False,
                    names: list[str] | None = None) -> list[tuple[Image, str]]:
    """The project's stitched images that may leave QC: QC-approved ones, or every stitched one with
    ``include_unreviewed``; each with its QC state. ``names`` restricts to those images (all must exist)."""
    images = [i for i in project.images if i.labels_key]
    if names is not None:
        known = {i.name for i in project.images}
        missing = [n for n in names if n not in known]
        if missing:
            raise LoopError(f"project {project.name!r} has no image named {', '.join(map(repr, missing))}")
        images = [i for i in images if i.name in names]
    out = [(i, qc_state(session, i)) for i in images]
    return out if include_unreviewed else [(i, s) for i, s in out if s == "approved"]


def nothing_reviewed_message(session: Session, project: Project, what: str) -> str:
    stitched = [i for i in project.images if i.labels_key]
    if not stitched:
        return f"project {project.name!r} has no stitched labels yet: run `cellloop stitch --batch ...` first"
    waiting = sum(qc_state(session, i) == "waiting" for i in stitched)
    return (f"project {project.name!r}: no QC-approved image to {what} ({len(stitched)} stitched, {waiting} waiting "
            f"for the expert's QC in the reviewer queue, filter 'image QC'); approve them there, or pass "
            f"--include-unreviewed")


def reviewed_labels(session: Session, storage: Storage, image: Image) -> np.ndarray:
    """The image's labels as QC left them: the QC task's current labels (the expert's edits in), else the stitch."""
    from backend.tasks import TaskService

    row = qc_of(session, image)
    if row is None:
        return decode_array(storage.get(image.labels_key), max_pixels=None)
    return TaskService(session, storage).labels(session.get(Task, row.task_id))

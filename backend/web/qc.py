"""The expert's whole-image QC, beside the review routes: a QC task's conflicts (as stitch listed them, each
resolvable) and crop seams. The task itself is edited, approved and rejected through the review routes."""
from __future__ import annotations

from flask import Blueprint, abort, jsonify
from sqlalchemy import select

from backend.store.models import ImageQC, Role, Task
from backend.web.auth import require_role
from backend.web.common import MAX_ID, BadRequest, db, json_body

bp = Blueprint("qc", __name__, url_prefix="/api/review/tasks")
reviewer_only = require_role(Role.reviewer)
# beyond this the QC page warns that a whole image is heavy for the browser (chunked serving does not exist yet)
LARGE_PIXELS = 4096 * 4096


def _qc(task_id: int, *, for_update: bool = False) -> tuple[Task, ImageQC]:
    task = db().get(Task, task_id) if task_id <= MAX_ID else None
    if task is None:
        abort(404, description=f"no task {task_id}")
    query = select(ImageQC).where(ImageQC.task_id == task.id)
    row = db().scalar(query.with_for_update() if for_update else query)
    if row is None:
        abort(404, description=f"task {task_id} is not an image QC task")
    return task, row


def qc_json(task: Task, row: ImageQC) -> dict:
    conflicts = row.conflicts or []
    resolved = sum(bool(c.get("resolved")) for c in conflicts)
    by_kind: dict[str, int] = {}
    for c in conflicts:
        if not c.get("resolved"):
            by_kind[c.get("kind", "?")] = by_kind.get(c.get("kind", "?"), 0) + 1
    pixels = task.shape[0] * task.shape[1]
    return {"task": task.id, "image": row.image.name, "shape": list(task.shape), "conflicts": conflicts,
            "seams": row.seams or [], "stitched_at": row.stitched_at.isoformat() if row.stitched_at else None,
            "counts": {"total": len(conflicts), "resolved": resolved, "open": len(conflicts) - resolved,
                       "open_by_kind": by_kind},
            "large": pixels > LARGE_PIXELS}


@bp.get("/<int:task_id>/qc")
@reviewer_only
def info(task_id: int):
    return jsonify(qc_json(*_qc(task_id)))


@bp.post("/<int:task_id>/qc/conflicts/<int:conflict_id>")
@reviewer_only
def resolve(task_id: int, conflict_id: int):
    """`{resolved: true|false}`: mark one conflict resolved (or open again)."""
    body = json_body()
    resolved = body.get("resolved")
    if not isinstance(resolved, bool):
        raise BadRequest("'resolved' must be true or false")
    task, row = _qc(task_id, for_update=True)
    conflicts = [dict(c) for c in (row.conflicts or [])]
    if not 0 <= conflict_id < len(conflicts):
        abort(404, description=f"task {task_id} has no conflict {conflict_id}")
    conflicts[conflict_id]["resolved"] = resolved
    row.conflicts = conflicts  # a new list: the JSON column sees the change
    db().commit()
    return jsonify(qc_json(task, row))

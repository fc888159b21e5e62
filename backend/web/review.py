"""Expert review: list submitted tasks, look, edit, approve or reject with a comment. Login + role."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, request
import numpy as np
from flask_login import current_user
from sqlalchemy import select, update

from backend.web.common import (ARRAY_MIMETYPE, MAX_ID, BadRequest, base_revision, binary, chunk_reply, chunk_revision,
                                db, edit_request, image_chunk_reply, json_body, service)
from backend.web.request_limits import enforce_body_limit, label_upload_limit
from backend.web.crowd import edit_reply, preview_reply, task_summary
from backend.store.arrays import decode_array
from backend.web.auth import make_task_token, require_role
from backend.store.models import Batch, Project, Role, Task, TaskState
from backend.tasks import Actor
from backend.tasks.crowd import merged_groups, not_gold, review_risk

bp = Blueprint("review", __name__, url_prefix="/api/review")
reviewer_only = require_role(Role.reviewer)
LABEL_DTYPES = {np.dtype(t) for t in ("int32", "int64", "uint16", "uint32", "int16", "uint8")}


def _task(task_id: int) -> Task:
    # an id no database column can hold is simply not a task (PostgreSQL would refuse the query)
    task = db().get(Task, task_id) if task_id <= MAX_ID else None
    if task is None:
        abort(404, description=f"no task {task_id}")
    return task


def _actor() -> Actor:
    return Actor(user=current_user._get_current_object())


@bp.get("/tasks")
@reviewer_only
def list_tasks():
    """The review queue: `?state=` (repeatable; default submitted and in review) and `?project=NAME`."""
    states = request.args.getlist("state") or [TaskState.submitted.value, TaskState.in_review.value]
    try:
        wanted = [TaskState(s) for s in states]
    except ValueError:
        abort(400, description=f"unknown state in {states}; states: {[s.value for s in TaskState]}")
    query = select(Task).join(Task.batch).join(Batch.project).where(Task.state.in_(wanted))
    project = request.args.get("project")
    if project:
        query = query.where(Project.name == project)
    # gold tasks are scored on submit, and replicas consensus merged are done: neither waits for an expert
    done = merged_groups(db())
    tasks = [t for t in db().scalars(query.where(not_gold()).order_by(Task.submitted_at, Task.id))
             if t.crop_group is None or t.crop_group not in done]
    risks = review_risk(db(), tasks)
    # `?order=risk`: the likeliest wrong first (replicas that disagree, low-scoring workers, hard crops)
    order = request.args.get("order")
    if order not in (None, "", "submitted", "risk"):
        abort(400, description="order must be 'submitted' or 'risk'")
    if order == "risk":
        tasks = sorted(tasks, key=lambda t: -risks[t.id]["risk"])
    # `?kind=crop|qc`: crop reviews or whole-image QC; the counts of both come back either way
    kind = request.args.get("kind")
    if kind not in (None, "", "crop", "qc"):
        abort(400, description="kind must be 'crop' or 'qc'")
    counts = {"crop": sum(t.kind != "qc" for t in tasks), "qc": sum(t.kind == "qc" for t in tasks)}
    if kind:
        tasks = [t for t in tasks if (t.kind == "qc") == (kind == "qc")]
    return jsonify({"tasks": [{"id": t.id, "state": t.state.value, "revision": t.revision, "box": list(t.box),
                               "project": t.batch.project.name, "time_open_s": t.time_open_s, "kind": t.kind,
                               "image": t.source_image.name if t.source_image else None,
                               "submitted_at": t.submitted_at.isoformat() if t.submitted_at else None,
                               **risks[t.id]}
                              for t in tasks],
                    "counts": counts,
                    "projects": db().scalars(select(Project.name).order_by(Project.name)).all()})


@bp.get("/tasks/<int:task_id>")
@reviewer_only
def info(task_id: int):
    svc = service()
    return jsonify(task_summary(_task(task_id), svc))


@bp.get("/tasks/<int:task_id>/image")
@reviewer_only
def image(task_id: int):
    return binary(service().image_bytes(_task(task_id)), ARRAY_MIMETYPE)


@bp.get("/tasks/<int:task_id>/labels")
@reviewer_only
def labels(task_id: int):
    task = _task(task_id)
    return binary(service().labels_bytes(task), ARRAY_MIMETYPE, revision=task.revision)


@bp.get("/tasks/<int:task_id>/image/<level>/<row>/<col>")
@reviewer_only
def image_chunk(task_id: int, level: str, row: str, col: str):
    task = _task(task_id)
    return image_chunk_reply(task, level, row, col)


@bp.get("/tasks/<int:task_id>/labels/<level>/<row>/<col>")
@reviewer_only
def labels_chunk(task_id: int, level: str, row: str, col: str):
    task = _task(task_id)
    revision = chunk_revision()
    return chunk_reply(lambda *a: service().labels_chunk_bytes(task, *a, revision=revision), level, row, col,
                       revision=task.revision)


@bp.post("/tasks/<int:task_id>/start")
@reviewer_only
def start(task_id: int):
    task = _task(task_id)
    svc = service()
    svc.start_review(task, _actor())
    return jsonify(task_summary(task, svc))


@bp.post("/tasks/<int:task_id>/edit")
@reviewer_only
def edit(task_id: int):
    body = json_body()
    task = _task(task_id)
    tool, params = edit_request(body, task)
    return edit_reply(*service().edit(task, _actor(), base_revision(body), tool, params))


@bp.post("/tasks/<int:task_id>/preview")
@reviewer_only
def preview(task_id: int):
    body = json_body()
    task = _task(task_id)
    tool, params = edit_request(body, task)
    return preview_reply(task, service().preview(task, _actor(), base_revision(body), tool, params))


@bp.post("/tasks/<int:task_id>/undo")
@reviewer_only
def undo(task_id: int):
    return edit_reply(*service().undo(_task(task_id), _actor(), base_revision(json_body())))


@bp.post("/tasks/<int:task_id>/redo")
@reviewer_only
def redo(task_id: int):
    return edit_reply(*service().redo(_task(task_id), _actor(), base_revision(json_body())))


@bp.put("/tasks/<int:task_id>/labels")
@reviewer_only
def upload_labels(task_id: int):
    """Replace the labels with an uploaded (H, W, 2) array (gzip .npy body); `?base_revision=N` required."""
    task = _task(task_id)
    base = request.args.get("base_revision", type=int)
    if base is None:
        raise BadRequest("'base_revision' query parameter (integer) is required")
    enforce_body_limit(label_upload_limit(task.shape))
    config = current_app.config["CELLLOOP"]
    # the header's shape and dtype are checked against the task before a byte is inflated
    array = decode_array(request.get_data(cache=False), dtypes=LABEL_DTYPES, shape=(*task.shape, 2),
                         max_pixels=config.max_image_pixels)
    rev = service().replace_labels(task, _actor(), base, array)
    return jsonify({"revision": rev.number})


def _verdict(task_id: int, verdict: str):
    body = json_body()
    comment = body.get("comment", "")
    if not isinstance(comment, str):
        raise BadRequest("'comment' must be a string")
    task = _task(task_id)
    svc = service()
    try:
        svc.review(task, _actor(), verdict, comment, body.get("pin"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return jsonify(task_summary(task, svc))


@bp.post("/tasks/<int:task_id>/approve")
@reviewer_only
def approve(task_id: int):
    return _verdict(task_id, "approve")


@bp.post("/tasks/<int:task_id>/reject")
@reviewer_only
def reject(task_id: int):
    return _verdict(task_id, "reject")


@bp.post("/tasks/<int:task_id>/link")
@require_role(Role.admin)
def link(task_id: int):
    """A fresh crowd link for the task (admins). `revoke: true` invalidates every earlier link first."""
    body = json_body()
    task = _task(task_id)
    if body.get("revoke") is True:
        # in SQL: two admins revoking at once both take effect
        db().execute(update(Task).where(Task.id == task.id).values(token_nonce=Task.token_nonce + 1))
        db().commit()
        db().refresh(task)
    worker = body.get("worker")
    token = make_task_token(task, worker if isinstance(worker, str) else None)
    return jsonify({"token": token, "path": f"/task/{token}"})

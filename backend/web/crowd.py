"""Routes a crowd annotator reaches with a signed task link: the token alone grants that one task."""
from __future__ import annotations

import re

from flask import Blueprint, abort, current_app, jsonify, request, send_from_directory
from sqlalchemy.orm import joinedload
from werkzeug.exceptions import HTTPException

from backend.web import common, link_limits
from backend.web.common import (ARRAY_MIMETYPE, PATCH_MIMETYPE, base_revision, binary, chunk_reply, chunk_revision,
                                edit_request, image_chunk_reply, json_body, service)
from backend.web.auth import read_task_token
from backend.store.models import Batch, Task
from backend.web.security_headers import PAGE_CSP
from backend.tasks import Actor
from backend.tasks.maps import assist_status

bp = Blueprint("crowd", __name__)
WORKER_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}$")


def _worker_ref(payload: dict) -> str | None:
    """The crowd platform's worker id: signed into the link, else `?worker=ID` on the request (the platform
    appends it to the link it shows each worker). Recorded with every edit, never trusted for access."""
    if payload.get("w"):
        return payload["w"]
    worker = request.args.get("worker")
    if worker is None:
        return None
    if not WORKER_ID.match(worker):
        abort(400, description="'worker' must be 1-100 letters, digits or _.:@-")
    return f"worker:{worker}"


def frame_policy(config) -> str:
    """CSP for the crowd task page: only the configured crowd platforms (and this server) may frame it."""
    ancestors = " ".join(("'self'",) + tuple(config.frame_ancestors))
    return f"{PAGE_CSP}; frame-ancestors {ancestors}"


def parent_origin(config) -> str | None:
    if config.parent_origin:
        return config.parent_origin
    return config.frame_ancestors[0] if config.frame_ancestors else None


def crowd_summary(task: Task, svc) -> dict:
    """The task as the crowd page sees it, with the origin its "submitted" message goes to."""
    return {**task_summary(task, svc), "parent_origin": parent_origin(current_app.config["CELLLOOP"])}


# routes that answer with the task JSON (it names the project), and those that store a patch under the project's prefix
SUMMARY_ENDPOINTS = frozenset({"crowd.info", "crowd.open_task", "crowd.submit"})
PATCH_ENDPOINTS = frozenset({"crowd.edit", "crowd.undo", "crowd.redo"})


def _needs_project() -> bool:
    """Whether this request loads the task's batch with it (one query instead of two): those that answer with the task
    JSON, and edits when their patches go to storage (every key names the project). An edit whose patch stays in its
    row (and the other routes) never touches it: a join the edit does not need costs as much as its tool."""
    if request.endpoint in SUMMARY_ENDPOINTS:
        return True
    return request.endpoint in PATCH_ENDPOINTS and not current_app.config["CELLLOOP"].patch_in_row_bytes


def _task_from_token(token: str, *, payload: dict | None = None) -> tuple[Task, Actor]:
    """The task and actor of a link (``payload``: the token already read and its request admitted)."""
    if payload is None:
        payload = read_task_token(token)
        # every link of a task counts against the task's request rates and CPU budget: a 429 here, before any work
        link_limits.admit(f"task:{payload['t']}")
    task_id = payload["t"]
    # the task JSON names the project: batch and project in the task's own query
    options = [joinedload(Task.batch).joinedload(Batch.project)] if _needs_project() else []
    task = common.db().get(Task, task_id, options=options) if task_id <= common.MAX_ID else None
    # a revoked link (nonce bumped) looks exactly like a link that never existed
    if task is None or task.token_nonce != payload.get("n"):
        abort(404, description="unknown task link")
    return task, Actor(ref=_worker_ref(payload) or f"link:{task.id}")


def _roles(project) -> dict:
    from backend.store.projects import model_channel_indices

    try:
        nuclear, membrane = model_channel_indices(project)
    except ValueError:
        return {}
    return {"nuclear": nuclear} if membrane == nuclear else {"nuclear": nuclear, "membrane": membrane}


def task_summary(task: Task, svc) -> dict:
    project = task.batch.project
    undo, redo = svc.history(task)
    review = svc.last_review(task)
    return {
        "id": task.id,
        "state": task.state.value,
        "revision": task.revision,
        "box": list(task.box),
        "shape": list(task.shape),
        "channels": list(project.channel_names),
        "layers": ["whole-cell", "nuclear"],
        "project": project.name,
        "kind": task.kind,
        # which channels feed the model: the editor colours them by role (nuclear green, membrane red)
        "roles": _roles(project),
        "can_undo": bool(undo),
        "can_redo": bool(redo),
        # a comment pinned to a cell or point says where (the editor shows it there)
        "review": None if review is None else {"verdict": review.verdict, "comment": review.comment,
                                                **({"pin": review.pin} if review.pin else {})},
        "assist": assist_status(task),
        # a big task's chunk layout (size, each level's shape): the editor loads what is in view first
        "chunks": None if task.chunk_size is None else svc.chunk_grid(task).describe(),
    }


@bp.get("/task/<token>")
def page(token: str):
    _task_from_token(token)
    resp = send_from_directory(current_app.config["FRONTEND_DIR"], "task.html")
    resp.headers["Content-Security-Policy"] = frame_policy(current_app.config["CELLLOOP"])
    return resp


@bp.get("/api/task/<token>")
def info(token: str):
    # read-only: a link prefetcher or a reviewer's preview must not assign the task or start its clock
    task, _ = _task_from_token(token)
    return jsonify(crowd_summary(task, service()))


@bp.post("/api/task/<token>/open")
def open_task(token: str):
    """The editor has loaded: assign the task to this link's worker and start its clock (idempotent)."""
    task, actor = _task_from_token(token)
    svc = service()
    svc.open(task, actor)
    return jsonify(crowd_summary(task, svc))


@bp.get("/api/task/<token>/image")
def image(token: str):
    task, _ = _task_from_token(token)
    return binary(service().image_bytes(task), ARRAY_MIMETYPE)


@bp.get("/api/task/<token>/labels")
def labels(token: str):
    task, _ = _task_from_token(token)
    return binary(service().labels_bytes(task), ARRAY_MIMETYPE, revision=task.revision)


@bp.get("/api/task/<token>/image/<level>/<row>/<col>")
def image_chunk(token: str, level: str, row: str, col: str):
    """One chunk of a big task's channels, (h, w, C) gzip .npy: level k is every 2**k-th row and column."""
    task, _ = _task_from_token(token)
    return image_chunk_reply(task, level, row, col)


@bp.get("/api/task/<token>/labels/<level>/<row>/<col>")
def labels_chunk(token: str, level: str, row: str, col: str):
    """One chunk of the current labels, (h, w, 2) int32; ``?revision=N`` refuses (409) any other revision."""
    task, _ = _task_from_token(token)
    revision = chunk_revision()
    return chunk_reply(lambda *a: service().labels_chunk_bytes(task, *a, revision=revision), level, row, col,
                       revision=task.revision)


def edit_reply(rev, patch):
    return binary(patch.to_bytes(), PATCH_MIMETYPE, revision=rev.number)


@bp.post("/api/task/<token>/edit")
def edit(token: str):
    payload = read_task_token(token)
    link_limits.admit(f"task:{payload['t']}")
    svc = service()
    done = _edit_known(svc, payload)
    if done is not None:
        return edit_reply(*done)
    task, actor = _task_from_token(token, payload=payload)
    body = json_body()
    tool, params = edit_request(body, task)
    return edit_reply(*svc.edit(task, actor, base_revision(body), tool, params))


def _edit_known(svc, payload: dict):
    """The edit without reading the task row, when this worker committed the task's last revision and still holds its
    labels (a person's strokes on one worker, one after another); None: the ordinary path runs, and answers any
    refusal (revoked link, stale base, bad request) exactly as it always does."""
    known = svc.known_task(payload["t"])
    if known is None or known.token_nonce != payload.get("n"):
        return None
    try:
        ref = _worker_ref(payload)
        body = json_body()
        tool, params = edit_request(body, known)
        base = base_revision(body)
    except (HTTPException, common.BadRequest):
        return None
    return svc.edit_known(known, Actor(ref=ref or f"link:{known.task_id}"), base, tool, params)


def preview_reply(task, patch):
    return binary(patch.to_bytes(), PATCH_MIMETYPE, revision=task.revision)


@bp.post("/api/task/<token>/preview")
def preview(token: str):
    """The patch an edit would make, computed like /edit and stored nowhere (the assist box's preview)."""
    task, actor = _task_from_token(token)
    body = json_body()
    tool, params = edit_request(body, task)
    return preview_reply(task, service().preview(task, actor, base_revision(body), tool, params))


@bp.post("/api/task/<token>/undo")
def undo(token: str):
    task, actor = _task_from_token(token)
    return edit_reply(*service().undo(task, actor, base_revision(json_body())))


@bp.post("/api/task/<token>/redo")
def redo(token: str):
    task, actor = _task_from_token(token)
    return edit_reply(*service().redo(task, actor, base_revision(json_body())))


@bp.post("/api/task/<token>/submit")
def submit(token: str):
    task, actor = _task_from_token(token)
    svc = service()
    svc.submit(task, actor, base_revision(json_body()))
    return jsonify(task_summary(task, svc))

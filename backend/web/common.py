"""Shared plumbing for the blueprints: per-request DB session, storage, JSON errors, binary array replies."""
from __future__ import annotations

from flask import Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from backend.web import request_limits as limits
from backend.store.arrays import ArrayError
from backend.store.chunks import NoSuchChunk
from backend.edits import EditError
from backend.tasks import chunked
from backend.tasks import CorruptHistory, NothingToUndo, StaleRevision, TaskService
from backend.tasks.revisions import NotChunked
from backend.tasks.states import TransitionError

# ids are 32-bit integer columns: a larger id is no row (and PostgreSQL would refuse to compare it)
MAX_ID = 2**31 - 1
ARRAY_MIMETYPE = "application/x-npy+gzip"
PATCH_MIMETYPE = "application/x-cellloop-patch"


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that a body nested too deeply for the parser is bad JSON (a 400), not a crash."""

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def db():
    if "db" not in g:
        g.db = current_app.extensions["cellloop.sessionmaker"]()
    return g.db


def storage():
    return current_app.extensions["cellloop.storage"]


def service() -> TaskService:
    return TaskService(db(), storage(), cache=current_app.extensions["cellloop.cache"],
                       patch_in_row_bytes=current_app.config["CELLLOOP"].patch_in_row_bytes)


def close_db(_exc=None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    return body


def edit_request(body: dict, task) -> tuple[str, dict]:
    """(tool, params) of an edit request, within the caps of one edit and with only the tool's own params."""
    tool, params = body.get("tool"), body.get("params", {})
    if not isinstance(tool, str) or not isinstance(params, dict):
        raise BadRequest("expected {'tool': name, 'params': {...}, 'base_revision': n}")
    try:
        return tool, limits.check_edit(tool, params, task.shape)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def base_revision(body: dict) -> int:
    value = body.get("base_revision")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("'base_revision' (integer) is required: the revision your edit is based on")
    return value


class BadRequest(Exception):
    pass


def chunk_address(level: str, row: str, col: str) -> tuple[int, int, int]:
    """(level, row, col) of a chunk route, as small non-negative integers (a 400 otherwise)."""
    values = []
    for name, text in (("level", level), ("row", row), ("col", col)):
        if not (text.isascii() and text.isdigit() and len(text) <= 6):
            raise BadRequest(f"chunk {name} must be a non-negative integer, got {text[:20]!r}")
        values.append(int(text))
    return values[0], values[1], values[2]


MAX_CHANNEL_DIGITS = 4


def chunk_channels() -> list[int] | None:
    """``?channels=0,3`` of an image chunk request: the channels wanted, in that order (None: all of them).
    Integers, none twice; whether they exist is checked against the chunk (image_chunk_reply)."""
    text = request.args.get("channels")
    if text is None:
        return None
    parts = text.split(",")
    if not all(p.isascii() and p.isdigit() and len(p) <= MAX_CHANNEL_DIGITS for p in parts):
        raise BadRequest(f"'channels' must be comma-separated channel numbers (e.g. channels=0,3), got {text[:40]!r}")
    channels = [int(p) for p in parts]
    if len(set(channels)) != len(channels):
        raise BadRequest(f"'channels' names a channel twice: {text[:40]!r}")
    return channels


def image_chunk_reply(task, level: str, row: str, col: str) -> Response:
    """One image chunk of a big task: as stored, or only the channels of ``?channels=`` (chunked.py)."""
    channels = chunk_channels()
    svc = service()
    if channels is None:
        return chunk_reply(lambda *a: svc.image_chunk_bytes(task, *a), level, row, col)

    def read(lv: int, r: int, c: int) -> bytes:
        svc.chunk_grid(task).check(lv, r, c)
        try:
            return chunked.image_channels_bytes(storage(), task.image_key, lv, r, c, channels)
        except chunked.ChannelsOutOfRange as exc:
            raise BadRequest(str(exc)) from None
    return chunk_reply(read, level, row, col)


def chunk_revision() -> int | None:
    """``?revision=N`` of a labels chunk request: the revision the editor is assembling (checked, 409 if stale)."""
    text = request.args.get("revision")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise BadRequest("'revision' must be a non-negative integer")
    return int(text)


def chunk_reply(read, level: str, row: str, col: str, **headers) -> Response:
    """A chunk (gzip .npy) from ``read(level, row, col)``; a chunk the task's grid lacks is a 404 (NoSuchChunk)."""
    return binary(read(*chunk_address(level, row, col)), ARRAY_MIMETYPE, **headers)


def binary(data: bytes, mimetype: str, **headers) -> Response:
    resp = Response(data, mimetype=mimetype)
    for key, value in headers.items():
        resp.headers["X-" + key.replace("_", "-").title()] = str(value)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def error(status: int, message: str, **extra):
    resp = jsonify({"error": message, **extra})
    resp.status_code = status
    return resp


def register_error_handlers(app) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(limits.TooLarge)
    def _too_large(exc):
        return error(413, str(exc))

    @app.errorhandler(BadRequest)
    def _bad(exc):
        return error(400, str(exc))

    @app.errorhandler(NoSuchChunk)
    def _no_chunk(exc):
        return error(404, str(exc))

    @app.errorhandler(NotChunked)
    def _not_chunked(exc):
        return error(404, str(exc))

    @app.errorhandler(EditError)
    def _edit(exc):
        return error(400, str(exc))

    @app.errorhandler(ArrayError)
    def _array(exc):
        return error(400, str(exc))

    @app.errorhandler(NothingToUndo)
    def _nothing(exc):
        return error(409, str(exc))

    @app.errorhandler(CorruptHistory)
    def _corrupt(exc):
        current_app.logger.error("%s", exc)
        return error(500, "this task's stored history is inconsistent; an admin has been notified in the log")

    @app.errorhandler(StaleRevision)
    def _stale(exc: StaleRevision):
        return error(409, str(exc), revision=exc.current)

    @app.errorhandler(TransitionError)
    def _transition(exc: TransitionError):
        return error(409, str(exc), state=exc.state.value)

"""Who may do what: flask-login sessions for reviewers and admins, signed task tokens for the crowd.

A task token names one task and that task's current nonce, is signed with the app's secret and expires.
It travels in the URL, never in a cookie, so a crowd page works inside a third-party iframe, and a token
for task A can never reach task B. Cookie-authenticated state changes need the session's CSRF token in
the `X-CSRF-Token` header.
"""
from __future__ import annotations

import hmac
import secrets
from functools import wraps

from flask import abort, current_app, g, request, session
from flask_login import LoginManager, current_user
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.security import check_password_hash, generate_password_hash

from backend.models import Role, Task, User

login_manager = LoginManager()
TOKEN_SALT = "cellloop.task"
CSRF_HEADER = "X-CSRF-Token"


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    return generate_password_hash(password)


def verify_password(user: User | None, password: str) -> bool:
    if user is None or not user.active:
        # same cost whether or not the user exists, so timing does not reveal usernames
        check_password_hash(_DUMMY_HASH, password)
        return False
    return check_password_hash(user.password_hash, password)


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))


def init_login(app) -> None:
    login_manager.init_app(app)

    @login_manager.user_loader
    def _load(user_id: str):
        from backend.api.common import db

        try:
            user = db().get(User, int(user_id))
        except ValueError:
            return None
        return user if user is not None and user.active else None

    @login_manager.unauthorized_handler
    def _unauthorized():
        abort(401, description="login required")


# --- task tokens -----------------------------------------------------------------------------------------

def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=TOKEN_SALT)


def make_task_token(task: Task, worker: str | None = None) -> str:
    payload = {"t": task.id, "n": task.token_nonce}
    if worker:
        payload["w"] = worker
    return _serializer().dumps(payload)


def read_task_token(token: str) -> dict:
    """The token's payload, or 404 for anything not issued by us (never saying which task it was for);
    an expired token is 403, since its owner may ask for a new link."""
    try:
        payload = _serializer().loads(token, max_age=current_app.config["CELLLOOP"].token_max_age_s)
    except SignatureExpired:
        abort(403, description="this task link has expired")
    except BadSignature:
        abort(404, description="unknown task link")
    if not isinstance(payload, dict) or not isinstance(payload.get("t"), int):
        abort(404, description="unknown task link")
    return payload


# --- roles and CSRF ----------------------------------------------------------------------------------------

def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(expected, sent):
        abort(403, description="missing or invalid CSRF token")


def require_role(*roles: Role):
    """Login required, one of `roles` (admins pass every check), and CSRF on unsafe methods."""

    def decorate(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated:
                abort(401, description="login required")
            if not current_user.has_role(*roles):
                abort(403, description="your role does not allow this")
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                check_csrf()
            g.actor = current_user
            return fn(*args, **kwargs)

        return wrapper

    return decorate

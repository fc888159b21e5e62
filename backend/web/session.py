"""Login, logout and who-am-I for reviewers and admins (cookie sessions, CSRF on changes)."""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, session
from flask_login import current_user, logout_user
from sqlalchemy import select

from backend.web.common import db, json_body
from backend.web.auth import (check_csrf, csrf_token, end_all_sessions, hash_password, set_password, start_session,
                          verify_password)
from backend.store.models import User

bp = Blueprint("session", __name__, url_prefix="/api/auth")


@bp.get("/me")
def me():
    # also hands out the CSRF token a page needs before its first POST
    token = csrf_token()
    if not current_user.is_authenticated:
        return jsonify({"user": None, "csrf_token": token})
    return jsonify({"user": {"id": current_user.id, "username": current_user.username,
                             "role": current_user.role.value}, "csrf_token": token})


@bp.post("/login")
def login():
    check_csrf()
    body = json_body()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        abort(400, description="expected {'username': ..., 'password': ...}")
    user = db().scalar(select(User).where(User.username == username))
    if not verify_password(user, password):
        abort(401, description="wrong username or password")
    start_session(user)
    return jsonify({"user": {"id": user.id, "username": user.username, "role": user.role.value},
                    "csrf_token": csrf_token()})


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        check_csrf()
    logout_user()
    session.clear()
    return jsonify({"user": None})


def _logged_in_user() -> User:
    if not current_user.is_authenticated:
        abort(401, description="login required")
    check_csrf()
    return db().get(User, current_user.id)


@bp.post("/logout-everywhere")
def logout_everywhere():
    """End every session of this user on every device (a lost laptop, a shared computer)."""
    end_all_sessions(db(), _logged_in_user())
    logout_user()
    session.clear()
    return jsonify({"user": None})


@bp.post("/password")
def change_password():
    """A new password ends every other session; this one continues under the new version."""
    user = _logged_in_user()
    body = json_body()
    current, new = body.get("current_password"), body.get("new_password")
    if not isinstance(current, str) or not isinstance(new, str):
        abort(400, description="expected {'current_password': ..., 'new_password': ...}")
    if not verify_password(user, current):
        abort(401, description="wrong current password")
    try:
        hash_password(new)
    except ValueError as exc:
        abort(400, description=str(exc))
    set_password(db(), user, new)
    start_session(user)
    return jsonify({"user": {"id": user.id, "username": user.username, "role": user.role.value},
                    "csrf_token": csrf_token()})

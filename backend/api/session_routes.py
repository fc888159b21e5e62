"""Login, logout and who-am-I for reviewers and admins (cookie sessions, CSRF on changes)."""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, session
from flask_login import current_user, login_user, logout_user
from sqlalchemy import select

from backend.api.common import db, json_body
from backend.auth import check_csrf, csrf_token, verify_password
from backend.models import User

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
    # a fresh session on login: no fixation of a pre-login session id or CSRF token
    session.clear()
    login_user(user)
    return jsonify({"user": {"id": user.id, "username": user.username, "role": user.role.value},
                    "csrf_token": csrf_token()})


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        check_csrf()
    logout_user()
    session.clear()
    return jsonify({"user": None})

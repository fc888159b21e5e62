"""Who may do what: flask-login sessions for reviewers and admins, signed task tokens for the crowd.

A task token names one task and that task's current nonce, is signed with the app's secret and expires.
It travels in the URL, never in a cookie, so a crowd page works inside a third-party iframe, and a token
for task A can never reach task B. Cookie-authenticated state changes need the session's CSRF token in
the `X-CSRF-Token` header.
"""
from __future__ import annotations

import hmac
import secrets
import time
from functools import wraps

from flask import abort, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, current_user, login_user
from sqlalchemy import update
from werkzeug.security import check_password_hash, generate_password_hash

from backend.store.models import Role, Task, User
from backend.tasks import links

login_manager = LoginManager()
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


# --- sessions ----------------------------------------------------------------------------------------------
# A signed cookie cannot be taken back, so each one names its user's session version and login time: a
# cookie from before the last logout-everywhere or password change, or older than the session lifetime, no
# longer loads its user, whatever its signature says.

def start_session(user: User) -> None:
    session.clear()  # no fixation of a pre-login session or CSRF token
    session.permanent = True
    session["sv"] = user.session_version
    session["login_at"] = int(time.time())
    login_user(user)


def session_is_current(user: User) -> bool:
    lifetime = current_app.config["CELLLOOP"].session_lifetime_s
    login_at = session.get("login_at")
    return (session.get("sv") == user.session_version and isinstance(login_at, int)
            and 0 <= time.time() - login_at <= lifetime)


def end_all_sessions(db_session, user: User) -> None:
    """Invalidate every session of ``user``, everywhere (commits)."""
    db_session.execute(update(User).where(User.id == user.id)
                       .values(session_version=User.session_version + 1))
    db_session.commit()
    db_session.refresh(user)


def set_password(db_session, user: User, password: str) -> None:
    """A new password ends every session signed under the old one (commits)."""
    user.password_hash = hash_password(password)
    end_all_sessions(db_session, user)


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except on crowd task routes: the token in the URL is their only credential and
    they never read or write a session, so opening and re-signing one there is skipped (a null session, which
    refuses any write)."""

    def open_session(self, app, request):
        if request.path.startswith(TOKEN_ROUTE_PREFIXES):
            return None  # Flask uses its null session
        return super().open_session(app, request)


TOKEN_ROUTE_PREFIXES = ("/task/", "/api/task/")


def init_login(app) -> None:
    app.session_interface = CookieSessions()
    login_manager.init_app(app)

    @login_manager.user_loader
    def _load(user_id: str):
        from backend.web.common import db

        try:
            user = db().get(User, int(user_id))
        except (ValueError, OverflowError):
            return None
        if user is None or not user.active or not session_is_current(user):
            return None
        return user

    @login_manager.unauthorized_handler
    def _unauthorized():
        abort(401, description="login required")


# --- task tokens -----------------------------------------------------------------------------------------

def make_task_token(task: Task, worker: str | None = None) -> str:
    return links.sign_task_token(current_app.config["SECRET_KEY"], task.id, task.token_nonce, worker)


def read_task_token(token: str) -> dict:
    """The token's payload, or 404 for anything not issued by us (never saying which task it was for);
    an expired token is 403, since its owner may ask for a new link."""
    try:
        return links.read_task_token(current_app.config["SECRET_KEY"], token,
                                     current_app.config["CELLLOOP"].token_max_age_s)
    except links.ExpiredLink as exc:
        abort(403, description=str(exc))
    except links.UnknownLink as exc:
        abort(404, description=str(exc))


# --- roles and CSRF ----------------------------------------------------------------------------------------

def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER, "")
    # bytes: compare_digest refuses non-ASCII str, and a header may hold anything
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(
            expected.encode("utf-8", "surrogateescape"), sent.encode("utf-8", "surrogateescape")):
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

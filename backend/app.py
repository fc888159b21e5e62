"""The Flask application factory. Stateless: everything lives in the database and the storage, so any
number of gunicorn workers (on any number of hosts) can serve the same project (each worker's array cache
only holds copies of immutable stored objects)."""
from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify, send_from_directory

from backend.auth import init_login
from backend.cache import ArrayCache
from backend.config import Config
from backend.db import make_engine, make_sessionmaker
from backend.storage import storage_from_url

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"


def create_app(config: Config | None = None, **overrides) -> Flask:
    config = config or Config.from_env(**overrides)
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=config.secret_key,
        CELLLOOP=config,
        FRONTEND_DIR=str(FRONTEND_DIR),
        MAX_CONTENT_LENGTH=config.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=config.secure_cookies,
        JSON_SORT_KEYS=False,
    )
    engine = make_engine(config.database_url)
    app.extensions["cellloop.engine"] = engine
    app.extensions["cellloop.sessionmaker"] = make_sessionmaker(engine)
    app.extensions["cellloop.storage"] = storage_from_url(config.storage_url)
    app.extensions["cellloop.cache"] = ArrayCache(config.array_cache_mb * 1024 * 1024)

    from backend.api import common, crowd, review, session_routes

    app.teardown_appcontext(common.close_db)
    common.register_error_handlers(app)
    init_login(app)
    app.register_blueprint(session_routes.bp)
    app.register_blueprint(crowd.bp)
    app.register_blueprint(review.bp)

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @app.get("/")
    def index():
        return send_from_directory(FRONTEND_DIR, "index.html")

    @app.get("/static/<path:path>")
    def static_files(path: str):
        return send_from_directory(FRONTEND_DIR, path)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        # task pages are meant to be framed by crowd platforms; the API is not a page
        if resp.mimetype == "text/html":
            # pages are not framable unless they say so (the crowd task page sets its own frame-ancestors)
            resp.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'")
        return resp

    return app

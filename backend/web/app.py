"""The Flask application factory. Stateless: everything lives in the database and the storage, so any
number of gunicorn workers (on any number of hosts) can serve the same project (each worker's array cache
only holds copies of immutable stored objects)."""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from flask import Flask, jsonify, send_from_directory
from werkzeug.middleware.proxy_fix import ProxyFix

from backend.web import common
from backend.web.request_limits import cap_request_body
from backend.web.auth import init_login
from backend.store.cache import ArrayCache
from backend.config import Config
from backend.store.db import make_engine, make_sessionmaker
from backend.web.log_masking import install_token_masking
from backend.web.rate_limits import init_rate_limits
from backend.web.link_limits import init_link_limits
from backend.web.security_headers import init_security_headers
from backend.store.storage import storage_from_url

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"


def create_app(config: Config | None = None, **overrides) -> Flask:
    config = config or Config.from_env(**overrides)
    app = Flask(__name__, static_folder=None)
    app.json = common.BoundedJSONProvider(app)
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
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=config.session_lifetime_s),
        JSON_SORT_KEYS=False,
    )
    if config.proxy_hops:
        # behind a load balancer: the client address and scheme come from the trusted X-Forwarded-* headers
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.proxy_hops, x_proto=config.proxy_hops,
                                x_host=config.proxy_hops)
    install_token_masking(app.logger, logging.getLogger("werkzeug"))
    engine = make_engine(config.database_url)
    app.extensions["cellloop.engine"] = engine
    app.extensions["cellloop.sessionmaker"] = make_sessionmaker(engine)
    app.extensions["cellloop.storage"] = storage_from_url(config.storage_url)
    app.extensions["cellloop.cache"] = ArrayCache(config.array_cache_mb * 1024 * 1024)

    from backend.web import crowd, qc, review, session as session_routes

    app.teardown_appcontext(common.close_db)
    app.before_request(cap_request_body)
    common.register_error_handlers(app)
    init_login(app)
    app.register_blueprint(session_routes.bp)
    app.register_blueprint(crowd.bp)
    app.register_blueprint(review.bp)
    app.register_blueprint(qc.bp)

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @app.get("/")
    def index():
        return send_from_directory(FRONTEND_DIR, "index.html")

    @app.get("/static/<path:path>")
    def static_files(path: str):
        return send_from_directory(FRONTEND_DIR, path)

    init_rate_limits(app, config)
    init_link_limits(app, config)
    init_security_headers(app)
    return app

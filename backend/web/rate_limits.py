"""Rate limits (flask-limiter): per reviewer on label changes and on image and labels reads, per client address and
per username on login. Crowd links have their own, cheaper path with their CPU budget: `backend.web.link_limits`.

Limits live in memory by default (one process); with several workers or hosts they must share one store,
set by `CELLLOOP_RATELIMIT_STORAGE_URL` (e.g. `redis://host:6379/0`), or each worker would grant the full
limit on its own. Login limits are checked before the password is hashed and count failed attempts only,
in tiers (a minute, an hour, a day): an attacker slows down progressively, a user who typed a password
wrong twice does not notice.
"""
from __future__ import annotations

import hashlib

from flask import Flask, request
from flask_limiter import Limiter

REVIEW_WRITE_ENDPOINTS = ("review.edit", "review.preview", "review.undo", "review.redo", "review.upload_labels")
# reads that inflate or encode whole arrays: a reviewer's page reading them in a loop would hold a worker
REVIEW_READ_ENDPOINTS = ("review.image", "review.labels")
REVIEW_CHUNK_ENDPOINTS = ("review.image_chunk", "review.labels_chunk")


def client_address() -> str:
    # request.remote_addr is the proxy's own address unless CELLLOOP_PROXY_HOPS trusts X-Forwarded-For
    return request.remote_addr or "unknown"


def login_username_key() -> str:
    body = request.get_json(silent=True, cache=True)
    name = body.get("username") if isinstance(body, dict) else None
    name = name.strip().lower() if isinstance(name, str) else ""
    return "user:" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def reviewer_key() -> str:
    from flask_login import current_user

    return f"reviewer:{current_user.get_id()}" if current_user.is_authenticated else "ip:" + client_address()


def _failed(resp) -> bool:
    return resp.status_code in (400, 401)


def init_rate_limits(app: Flask, config) -> Limiter:
    """A limiter of this app's own (tests build many apps in one process), wrapped around the write routes."""
    limiter = Limiter(
        key_func=client_address,
        app=app,
        storage_uri=config.ratelimit_storage_url,
        strategy="moving-window",
        headers_enabled=True,
        enabled=config.ratelimit_enabled,
        key_prefix=config.ratelimit_key_prefix,
    )
    rules = {endpoint: [(config.ratelimit_link_writes, reviewer_key, None)] for endpoint in REVIEW_WRITE_ENDPOINTS}
    rules.update({endpoint: [(config.ratelimit_link_reads, reviewer_key, None)] for endpoint in REVIEW_READ_ENDPOINTS})
    rules.update({endpoint: [(config.ratelimit_link_chunk_reads, reviewer_key, None)]
                  for endpoint in REVIEW_CHUNK_ENDPOINTS})
    rules["session.login"] = [(config.ratelimit_login_ip, client_address, _failed),
                              (config.ratelimit_login_user, login_username_key, _failed)]
    # a stolen session must not become a way to guess the current password either
    rules["session.change_password"] = [(config.ratelimit_login_user, reviewer_key, _failed)]
    for endpoint, limits in rules.items():
        view = app.view_functions[endpoint]
        for limit, key, deduct in limits:
            view = limiter.limit(limit, key_func=key, deduct_when=deduct,
                                 scope=f"{endpoint}:{key.__name__}")(view)
        app.view_functions[endpoint] = view
    # every limit here is on its route and checked by the route's own wrapper: with no app-wide limits the
    # limiter's app-wide check before each request finds nothing, yet costs every request (a crowd edit included)
    # about as much as a SQL statement
    if limiter._check_request_limit in app.before_request_funcs.get(None, []):
        app.before_request_funcs[None].remove(limiter._check_request_limit)
    # the wrapped views only hold a weak reference to their limiter: the app keeps it alive
    app.extensions["cellloop.limiter"] = limiter
    return limiter

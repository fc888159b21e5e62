"""Response headers that keep tokens and pages where they belong.

- Crowd task links carry their token in the URL: no Referer may leak it to another site, and no cache may
  keep a response (`Referrer-Policy: no-referrer`, `Cache-Control: no-store`).
- Only the crowd task page is meant to be framed (by the crowd platform); reviewer and admin pages refuse
  every frame (`frame-ancestors 'none'`), so no other site can overlay and click them.
- Browsers must not guess content types (`nosniff`), and behind HTTPS they must never fall back to HTTP (HSTS).
"""
from __future__ import annotations

from flask import Flask, Response, request

PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; base-uri 'none'; form-action 'self'"
# the crowd page's own frame-ancestors (the configured crowd origins) is set where that page is served
FRAMEABLE_ENDPOINTS = frozenset({"crowd.page"})
HSTS = "max-age=31536000; includeSubDomains"


def is_token_route() -> bool:
    return request.path.startswith(("/task/", "/api/task/"))


def apply_security_headers(resp: Response) -> Response:
    headers = resp.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    # on every response: a page that links anywhere never sends its (possibly token-bearing) URL along
    headers.setdefault("Referrer-Policy", "no-referrer")
    if is_token_route() or request.path.startswith("/api/"):
        headers["Cache-Control"] = "no-store"
    if resp.mimetype == "text/html":
        if request.endpoint in FRAMEABLE_ENDPOINTS:
            headers.setdefault("Content-Security-Policy", f"{PAGE_CSP}; frame-ancestors 'self'")
        else:
            headers.setdefault("Content-Security-Policy", f"{PAGE_CSP}; frame-ancestors 'none'")
            headers.setdefault("X-Frame-Options", "DENY")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", HSTS)
    return resp


def init_security_headers(app: Flask) -> None:
    app.after_request(apply_security_headers)

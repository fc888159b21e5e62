"""Secrets, sessions and headers: a short or empty secret key refuses to start, the generated one is private;
sessions end server-side on logout-everywhere and password change and after their lifetime; pages carry the
headers that keep tokens out of Referers and caches and reviewer pages out of frames; logs mask tokens."""
from __future__ import annotations

import logging
import os
import stat
import time

import pytest

from backend.config import Config, ConfigError
from backend.web.log_masking import mask_tokens

from ..conftest import PASSWORD, login


@pytest.mark.parametrize("key", ["", "   ", "short-key"])
def test_short_or_empty_secret_key_refuses_to_start(tmp_path, monkeypatch, key):
    monkeypatch.setenv("CELLLOOP_SECRET_KEY", key)
    with pytest.raises(ConfigError, match="secret key"):
        Config.from_env(instance_dir=tmp_path)


def test_empty_secret_key_file_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv("CELLLOOP_SECRET_KEY", raising=False)
    (tmp_path / "secret_key").write_text("")
    with pytest.raises(ConfigError, match="secret_key"):
        Config.from_env(instance_dir=tmp_path)


def test_generated_secret_key_and_sqlite_file_are_private(tmp_path, monkeypatch):
    monkeypatch.delenv("CELLLOOP_SECRET_KEY", raising=False)
    monkeypatch.delenv("CELLLOOP_DATABASE_URL", raising=False)
    instance = tmp_path / "inst"
    first = Config.from_env(instance_dir=instance)
    second = Config.from_env(instance_dir=instance)
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 48
    assert stat.S_IMODE((instance / "secret_key").stat().st_mode) == 0o600
    assert stat.S_IMODE(instance.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE((instance / "cellloop.sqlite").stat().st_mode) == 0o600
    # no temporary key file is left behind
    assert sorted(p.name for p in instance.iterdir()) == ["cellloop.sqlite", "secret_key"]


def test_bad_numeric_setting_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_TOKEN_MAX_AGE_S", "two weeks")
    with pytest.raises(ConfigError, match="CELLLOOP_TOKEN_MAX_AGE_S must be an integer"):
        Config.from_env(instance_dir=tmp_path, secret_key="k" * 32)


def test_secure_cookies_follow_an_https_base_url(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOOP_BASE_URL", "https://cells.example.org")
    assert Config.from_env(instance_dir=tmp_path, secret_key="k" * 32).secure_cookies
    monkeypatch.setenv("CELLLOOP_BASE_URL", "http://127.0.0.1:8000")
    assert not Config.from_env(instance_dir=tmp_path, secret_key="k" * 32).secure_cookies


def _me(client):
    return client.get("/api/auth/me").get_json()["user"]


def test_logout_everywhere_ends_other_sessions(world):
    laptop, phone = world.app.test_client(), world.app.test_client()
    csrf = login(laptop, "rev")
    login(phone, "rev")
    assert _me(phone)["username"] == "rev"
    stolen_cookie = phone.get_cookie("session").value
    assert laptop.post("/api/auth/logout-everywhere", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert _me(phone) is None and _me(laptop) is None
    # a copy of the old cookie, replayed from elsewhere, is dead too
    thief = world.app.test_client()
    thief.set_cookie("session", stolen_cookie)
    assert thief.get(f"/api/review/tasks").status_code == 401


def test_password_change_ends_other_sessions_but_keeps_this_one(world):
    mine, other = world.app.test_client(), world.app.test_client()
    csrf = login(mine, "rev")
    login(other, "rev")
    resp = mine.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "a new passphrase"},
                     headers={"X-CSRF-Token": csrf})
    assert resp.status_code == 200, resp.get_json()
    assert _me(mine)["username"] == "rev"
    assert _me(other) is None
    wrong = mine.post("/api/auth/password", json={"current_password": "nope-nope", "new_password": "x" * 12},
                      headers={"X-CSRF-Token": resp.get_json()["csrf_token"]})
    assert wrong.status_code == 401
    fresh = world.app.test_client()
    login(fresh, "rev", "a new passphrase")


def test_session_lifetime_is_bounded(world, monkeypatch):
    client = world.app.test_client()
    login(client, "rev")
    assert _me(client) is not None
    lifetime = world.config.session_lifetime_s
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + lifetime + 5)
    assert _me(client) is None


def test_headers_on_token_routes_and_pages(world):
    token = world.tokens[world.task_ids[0]]
    c = world.client
    for path in (f"/task/{token}", f"/api/task/{token}", f"/api/task/{token}/labels"):
        resp = c.get(path)
        assert resp.status_code == 200
        assert resp.headers["Referrer-Policy"] == "no-referrer", path
        assert resp.headers["Cache-Control"] == "no-store", path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
    # the crowd page may be framed (by its own origin, plus the configured crowd origins)
    crowd_csp = c.get(f"/task/{token}").headers["Content-Security-Policy"]
    assert "frame-ancestors" in crowd_csp and "'none'" not in crowd_csp.split("frame-ancestors")[1]
    # the reviewer page may not be framed by anyone
    page = c.get("/")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in page.headers
    # behind HTTPS the browser is told to stay there
    secure = c.get("/", base_url="https://cells.example.org")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    # errors on token routes carry the same headers
    miss = c.get("/api/task/not-a-token")
    assert miss.status_code == 404 and miss.headers["Cache-Control"] == "no-store"


def test_mask_tokens():
    token = "eyJ0IjoxLCJuIjowfQ.Z2x.abc-DEF_123"
    line = f'127.0.0.1 - - "GET /api/task/{token}/labels?x=1 HTTP/1.1" 200 "https://h/task/{token}"'
    masked = mask_tokens(line)
    assert token not in masked
    assert "/api/task/<token>/labels?x=1" in masked and "https://h/task/<token>" in masked


def test_error_log_never_holds_a_token(world, caplog):
    """An unexpected exception on a token route is logged (by Flask, with the URL) with the token masked."""
    token = world.tokens[world.task_ids[0]]
    world.app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)
    storage = world.storage()

    def broken(key):
        raise RuntimeError(f"storage down while serving /api/task/{token}/image")

    storage.get = broken
    with caplog.at_level(logging.ERROR):
        resp = world.client.get(f"/api/task/{token}/image")
    assert resp.status_code == 500
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "/api/task/<token>" in text
    assert token not in text


def test_password_change_guesses_are_rate_limited(tmp_path, monkeypatch):
    from ..conftest import make_world

    monkeypatch.setenv("CELLLOOP_RATELIMIT_LOGIN_USER", "2 per minute")
    world = make_world(tmp_path)
    client = world.app.test_client()
    csrf = login(client, "rev")
    codes = [client.post("/api/auth/password", json={"current_password": f"guess-{i}", "new_password": "x" * 12},
                         headers={"X-CSRF-Token": csrf}).status_code for i in range(3)]
    assert codes == [401, 401, 429]

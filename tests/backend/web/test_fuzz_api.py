"""Fuzzing the HTTP API with hypothesis, TESTING off so that an unexpected exception shows as the 500 a user
would get: malformed JSON, wrong types, huge and non-finite numbers, coordinates outside the image, unknown
tools and parameters, wrong content types, oversized bodies, bad tokens and CSRF headers. Every answer is a 2xx,
or a 4xx with a JSON message; a rejected request leaves every database row and stored object as it was."""
from __future__ import annotations

import hashlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from backend.web.request_limits import KNOWN_PARAMS
from backend.store.models import Base

from ..conftest import login, make_world

TOOLS = sorted(KNOWN_PARAMS) + ["", "PAINT", "rm -rf", "__class__"]
PARAM_NAMES = sorted({p for params in KNOWN_PARAMS.values() for p in params}) + ["extra", "0", ""]

numbers = st.one_of(
    st.integers(min_value=-5, max_value=120),
    st.integers(),
    st.sampled_from([2**31, 2**63, -2**31 - 1, 10**40]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
point = st.one_of(st.lists(numbers, min_size=2, max_size=2), st.lists(scalars, max_size=3), scalars)
param_value = st.one_of(scalars, point, st.lists(point, max_size=40),
                        st.lists(numbers, min_size=4, max_size=4), st.dictionaries(st.text(max_size=5), scalars,
                                                                                     max_size=3))
params = st.dictionaries(st.sampled_from(PARAM_NAMES), param_value, max_size=7)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# near-valid edits on the 64x96 test task, so the fuzzer also reaches deep into every tool
in_image = st.lists(st.integers(-2, 97), min_size=2, max_size=2)
plausible_params = st.fixed_dictionaries({}, optional={
    "layer": st.sampled_from([0, 1, 2, "nuclear", "x", None]), "points": st.lists(in_image, max_size=30),
    "point": in_image, "seeds": st.lists(in_image, max_size=5), "radius": st.integers(-1, 120),
    "label": st.integers(-1, 12), "a": st.integers(0, 3), "b": st.integers(0, 3), "n": st.integers(-1, 120),
    "channel": st.integers(-1, 4), "box": st.lists(st.integers(-3, 100), min_size=4, max_size=4),
    "margin": st.integers(0, 120), "connectivity": st.sampled_from([4, 8, 6]), "overwrite": st.booleans(),
    "new_labels": st.lists(st.integers(-1, 40), max_size=5), "invert": scalars, "largest": st.booleans()})
plausible_edit = st.fixed_dictionaries({"tool": st.sampled_from(sorted(KNOWN_PARAMS)), "params": plausible_params,
                                        "base_revision": st.integers(0, 6)})
edit_body = st.fixed_dictionaries({"tool": st.sampled_from(TOOLS), "params": params},
                                  optional={"base_revision": st.one_of(st.integers(-2, 12), numbers, scalars)})
body = st.one_of(
    plausible_edit.map(lambda b: ("json", b)),
    edit_body.map(lambda b: ("json", b)),
    json_values.map(lambda b: ("json", b)),
    st.fixed_dictionaries({"base_revision": st.one_of(st.integers(-1, 10), scalars)},
                          optional={"comment": scalars, "revoke": scalars, "worker": scalars,
                                    "username": scalars, "password": scalars}).map(lambda b: ("json", b)),
    st.binary(max_size=300).map(lambda b: ("raw", b)),
    st.sampled_from([b"{", b'{"tool": "paint", "params": {"points": [[1e999, 2]]}}', b"\xff\xfe", b"null",
                     b'{"base_revision": NaN}', b"[" * 5000, b'{"a": ' + b"9" * 5000 + b"}"]).map(lambda b: ("raw", b)),
    st.integers(min_value=70_000, max_value=1_200_000).map(lambda n: ("raw", b" " * n)),
)
content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "application/json; charset=latin-1", None])
CROWD_ROUTES = [("GET", ""), ("GET", "/image"), ("GET", "/labels"), ("POST", "/open"), ("POST", "/edit"),
                ("POST", "/undo"), ("POST", "/redo"), ("POST", "/submit"), ("PUT", "/edit"), ("GET", "/edit")]
REVIEW_ROUTES = [("GET", ""), ("GET", "/labels"), ("POST", "/start"), ("POST", "/edit"), ("POST", "/undo"),
                 ("POST", "/redo"), ("POST", "/approve"), ("POST", "/reject"), ("POST", "/link"),
                 ("PUT", "/labels?base_revision=0"), ("PUT", "/labels?base_revision=x"), ("PUT", "/labels")]


def _snapshot(world) -> tuple:
    engine = world.app.extensions["cellloop.engine"]
    with engine.connect() as conn:
        rows = tuple(tuple(sorted(map(repr, conn.execute(select(table)).all())))
                     for table in Base.metadata.sorted_tables)
    storage = world.storage()
    objects = tuple((key, hashlib.sha256(storage.get(key)).hexdigest()) for key in sorted(storage.list("")))
    return rows, objects


def _check(world, resp, before, seen: set):
    seen.add(resp.status_code)
    assert resp.status_code < 500, (resp.status_code, resp.data[:300])
    if resp.status_code >= 400:
        message = resp.get_json(silent=True)
        assert isinstance(message, dict) and isinstance(message.get("error"), str) and message["error"], resp.data
        assert _snapshot(world) == before, f"a rejected request ({resp.status_code}) changed stored state"


def _send(client, method, url, payload, content_type, headers):
    kind, data = payload
    raw = json.dumps(data, allow_nan=True).encode() if kind == "json" else data
    kwargs = {"data": raw, "headers": headers}
    if content_type is not None:
        kwargs["content_type"] = content_type
    return client.open(url, method=method, **kwargs)


def _fuzz_world(tmp_path, monkeypatch):
    # rate limits would turn most fuzz requests into 429s before they reach validation
    monkeypatch.setenv("CELLLOOP_RATELIMIT_ENABLED", "false")
    world = make_world(tmp_path)
    world.app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)
    return world


def test_fuzz_crowd_routes(tmp_path, monkeypatch):
    world = _fuzz_world(tmp_path, monkeypatch)
    good = world.tokens[world.task_ids[0]]
    tokens = st.one_of(st.just(good), st.just(good[:-3]), st.just(good[:-1] + ("A" if good[-1] != "A" else "B")),
                       st.text(min_size=1, max_size=60).filter(lambda t: not set(t) & set("/?#")),
                       st.just("x" * 5000))

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(route=st.sampled_from(CROWD_ROUTES), token=tokens, payload=body, content_type=content_types)
    def run(route, token, payload, content_type):
        method, suffix = route
        base = "/task/" if suffix == "" and method == "GET" and token != good else "/api/task/"
        before = _snapshot(world)
        resp = _send(world.client, method, f"{base}{token}{suffix}", payload, content_type, {})
        _check(world, resp, before, seen)

    seen: set[int] = set()
    run()
    # the fuzzer reached both sides: accepted edits and every kind of refusal
    assert {200, 400, 404, 409, 413} <= seen, seen


def test_fuzz_review_and_auth_routes(tmp_path, monkeypatch):
    world = _fuzz_world(tmp_path, monkeypatch)
    reviewer = world.app.test_client()
    session_csrf = [login(reviewer, "boss")]
    task_ids = st.one_of(st.sampled_from(world.task_ids), st.integers(min_value=0, max_value=2**70))
    # None stands for the session's current CSRF token (it changes when the fuzzer logs out and back in)
    # (no control characters: an HTTP header cannot carry a newline)
    csrf_headers = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40),
                             st.just("caf\u00e9"), st.just(""))

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(route=st.sampled_from(REVIEW_ROUTES + [("POST", "@login"), ("POST", "@logout")]), task_id=task_ids,
           payload=body, content_type=content_types, csrf_value=csrf_headers)
    def run(route, task_id, payload, content_type, csrf_value):
        method, suffix = route
        url = f"/api/auth/{suffix[1:]}" if suffix.startswith("@") else f"/api/review/tasks/{task_id}{suffix}"
        sent = session_csrf[0] if csrf_value is None else csrf_value
        headers = {"X-CSRF-Token": sent.encode("utf-8").decode("latin-1")}
        before = _snapshot(world)
        resp = _send(reviewer, method, url, payload, content_type, headers)
        _check(world, resp, before, seen)
        if suffix in ("@logout", "@login") and resp.status_code == 200:
            session_csrf[0] = login(reviewer, "boss")

    seen: set[int] = set()
    run()
    assert {200, 400, 403, 404, 409} <= seen, seen

"""A crowd at work: the server as `cellloop serve` runs it (gunicorn, several sync workers) on PostgreSQL and S3
(moto's server on loopback, its own process), driven from this process by simulated annotators (asyncio +
httpx, every loop bounded in count and time).

    python bench/load.py            # load@10, load@50, load@200 (50 strokes each, a stroke every 1-3 s), saturate
    python bench/load.py --quick    # load@10 and a short saturate, 10 strokes each
    python bench/load.py --case load@200 --workers 4

Each annotator opens its own task (POST open), reads it (task JSON, image, labels), applies strokes at a
person's pace (paint or erase, a stroke every 1-3 s, randomised with a fixed seed), undoes some, submits, and
reads the final labels. One JSON line per case: requests/s, median and p95 latency per endpoint, ``errors``
(any transport failure or unexpected status) and ``lost``: afterwards, from the database and the bucket,
every acknowledged edit must be in its task's history with its parameters, and the labels the server
answered at the end must equal the replay of the stored history from revision 0. ``saturate`` sends strokes
without pauses from many annotators at once: ``edits_per_s`` is the server's ceiling. A final
``edit-breakdown`` line says where an edit's CPU goes on this stack: ``web_cpu_ms``, the gunicorn workers' CPU per
270-px edit from one client sending edits one after another (the issue's target counts this), the S3 server's,
PostgreSQL's and Redis's CPU apart, and ``cpu_ms_by_component``, the same edit run in process with this thread's CPU
inside each part (token check, SQL, link limits, rate limits, request checks, the tool, cache, (de)serialisation,
storage client; ``http_and_flask_ms`` the rest).

Each annotator keeps one connection alive, as a browser tab does (gunicorn keeps idle connections
``CELLLOOP_KEEPALIVE_S``, 5 s, longer than the pause between strokes); ``--new-connections`` opens one per request.
Every case runs under limits set explicitly (BENCH_LIMITS: the production defaults, printed with each line) and with
patches kept in revision rows (``--patch-in-row-bytes``, 64 KiB; 0 measures every patch as a bucket object).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
REDIS_URL = "redis://127.0.0.1:6379/0"
TASK_SIZE = 270
# the limits every case runs under, set explicitly (the production defaults): per link 20 edits a second, 30 reads a
# second, and a CPU budget of 5 CPU-seconds refilled at half a core; a paced annotator is far below all of them, and
# in saturate each of the 48 links sends a few edits a second
BENCH_LIMITS = {"ratelimit_link_writes": "20 per second; 1200 per minute",
                "ratelimit_link_reads": "30 per second; 1800 per minute",
                "link_cpu_burst_s": 5.0, "link_cpu_share": 0.5}
CASE_DEADLINE_S = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: it answers
                return
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def production_stack(tmp: Path, workers: int, patch_in_row_bytes: int = 64 * 1024):
    """PostgreSQL database, S3 bucket (moto server process), Redis rate-limit store, gunicorn: yields the
    config and the server's base URL; everything is torn down afterwards."""
    import psycopg

    from backend.store import db as dbmod
    from backend.cli.admin_commands import gunicorn_argv
    from backend.config import Config

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    s3_port = _free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db_name = "cellloop_load_" + secrets.token_hex(4)
    server = None
    try:
        _wait_http(f"http://127.0.0.1:{s3_port}/", moto, "moto S3 server")
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        config = Config.from_env(
            instance_dir=tmp / "instance",
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
            storage_url=f"s3://load-bench/cellloop?endpoint_url=http://127.0.0.1:{s3_port}&region=us-east-1"
                        f"&create_bucket=1",
            secret_key=secrets.token_urlsafe(32),
            ratelimit_storage_url=REDIS_URL, ratelimit_key_prefix="load-" + secrets.token_hex(4),
            patch_in_row_bytes=patch_in_row_bytes, **BENCH_LIMITS,
        )
        dbmod.upgrade(config.database_url)
        port = _free_port()
        env = {**os.environ, "CELLLOOP_INSTANCE_DIR": str(config.instance_dir),
               "CELLLOOP_DATABASE_URL": config.database_url, "CELLLOOP_STORAGE_URL": config.storage_url,
               "CELLLOOP_SECRET_KEY": config.secret_key, "CELLLOOP_RATELIMIT_STORAGE_URL": REDIS_URL,
               "CELLLOOP_RATELIMIT_KEY_PREFIX": config.ratelimit_key_prefix,
               "CELLLOOP_PATCH_IN_ROW_BYTES": str(config.patch_in_row_bytes),
               **{f"CELLLOOP_{name.upper()}": str(value) for name, value in BENCH_LIMITS.items()}}
        server = subprocess.Popen(
            gunicorn_argv(host="127.0.0.1", port=port, workers=workers,
                          extra=("--access-logfile", os.devnull, "--backlog", "2048")),
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/healthz", server, "gunicorn")
        yield config, base, {"server": server.pid, "s3": moto.pid, "database": db_name}
    finally:
        if server is not None:
            _stop(server)
        _stop(moto)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def make_tasks(config, n: int, seed: int) -> list[tuple[int, str]]:
    """n prelabeled 270-px crowd tasks cut from synthetic tissue; (task id, link token) each."""
    from backend.web.app import create_app
    from backend.web.auth import make_task_token
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService
    from pipeline import synthetic

    app = create_app(config)
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    image, labels = synthetic.make_tissue((2 * TASK_SIZE, 2 * TASK_SIZE), seed=seed)
    project = project_from_image(session, storage, name=f"load-{seed}-{n}", image=image,
                             channel_names=["nuclear", "membrane"])
    batch = Batch(project=project, name="crowd")
    session.add(batch)
    svc = TaskService(session, storage)
    corners = [(0, 0), (0, TASK_SIZE), (TASK_SIZE, 0), (TASK_SIZE, TASK_SIZE)]
    tasks = []
    for i in range(n):
        y0, x0 = corners[i % 4]
        box = (y0, x0, y0 + TASK_SIZE, x0 + TASK_SIZE)
        tasks.append(svc.create_task(batch, box, image[y0:y0 + TASK_SIZE, x0:x0 + TASK_SIZE],
                                     labels[y0:y0 + TASK_SIZE, x0:x0 + TASK_SIZE]))
    session.commit()
    with app.app_context():
        out = [(t.id, make_task_token(t)) for t in tasks]
    session.close()
    app.extensions["cellloop.engine"].dispose()
    return out


class Recorder:
    def __init__(self):
        self.latency: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.requests = 0

    async def call(self, client, name: str, method: str, url: str, expect=(200,), **kwargs):
        t0 = time.perf_counter()
        try:
            resp = await client.request(method, url, **kwargs)
        except Exception as exc:  # a transport failure is an error of the run, never a crash of the bench
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return None
        finally:
            self.requests += 1
        self.latency.setdefault(name, []).append(time.perf_counter() - t0)
        if resp.status_code not in expect:
            self.errors.append(f"{name}: HTTP {resp.status_code}: {resp.text[:200]}")
            return None
        return resp


def _stroke(rng: random.Random, max_label: int) -> tuple[str, dict]:
    cy, cx = rng.randrange(10, TASK_SIZE - 10), rng.randrange(10, TASK_SIZE - 10)
    points = []
    for _ in range(rng.randrange(3, 25)):
        cy = min(max(cy + rng.randrange(-4, 5), 0), TASK_SIZE - 1)
        cx = min(max(cx + rng.randrange(-4, 5), 0), TASK_SIZE - 1)
        points.append([cy, cx])
    if rng.random() < 0.25:
        return "erase", {"layer": rng.randrange(2), "points": points, "radius": rng.randrange(1, 5)}
    return "paint", {"layer": rng.randrange(2), "points": points, "radius": rng.randrange(1, 7),
                     "label": rng.randrange(1, max_label + 2), "overwrite": rng.random() < 0.3}


async def annotate(client, rec: Recorder, token: str, *, strokes: int, pause: tuple[float, float],
                   rng: random.Random, deadline: float) -> dict:
    """One annotator's session; returns what the server acknowledged and the labels it served at the end."""
    from backend.store.arrays import decode_array

    base = f"/api/task/{token}"
    acked: dict[int, tuple[str, dict]] = {}
    await asyncio.sleep(rng.uniform(0, 5) if pause[1] else 0)  # annotators arrive over a few seconds
    if await rec.call(client, "open", "POST", base + "/open") is None:
        return {"acked": acked, "final": None}
    info = await rec.call(client, "info", "GET", base)
    await rec.call(client, "image", "GET", base + "/image")
    labels = await rec.call(client, "labels", "GET", base + "/labels")
    if info is None or labels is None:
        return {"acked": acked, "final": None}
    revision = info.json()["revision"]
    max_label = int(decode_array(labels.content).max())
    can_undo = 0
    for _ in range(strokes):
        if time.monotonic() > deadline:
            rec.errors.append("annotator ran past the case deadline")
            break
        if pause[1]:
            await asyncio.sleep(rng.uniform(*pause))
        if can_undo and rng.random() < 0.1:
            resp = await rec.call(client, "undo", "POST", base + "/undo", json={"base_revision": revision})
            if resp is None:
                break
            revision = int(resp.headers["X-Revision"])
            acked[revision] = ("undo", {})
            can_undo -= 1
            continue
        tool, params = _stroke(rng, max_label)
        resp = await rec.call(client, "edit", "POST", base + "/edit",
                              json={"base_revision": revision, "tool": tool, "params": params})
        if resp is None:
            break
        new = int(resp.headers["X-Revision"])
        if new != revision:  # a stroke that changed nothing leaves no revision
            acked[new] = ("edit", {"tool": tool, **params})
            can_undo += 1
        revision = new
    await rec.call(client, "submit", "POST", base + "/submit", json={"base_revision": revision})
    final = await rec.call(client, "labels", "GET", base + "/labels")
    return {"acked": acked, "final": None if final is None else (int(final.headers["X-Revision"]), final.content)}


async def drive(base: str, tokens: list[str], *, strokes: int, pause: tuple[float, float], seed: int,
                new_connections: bool = False) -> tuple:
    """Every annotator at once. Each has its own connection kept alive between requests, as a browser tab does
    (``new_connections``: a new connection for every request instead, the bench's way before)."""
    import contextlib

    import httpx

    rec = Recorder()
    deadline = time.monotonic() + CASE_DEADLINE_S
    async with contextlib.AsyncExitStack() as stack:
        if new_connections:
            shared = await stack.enter_async_context(httpx.AsyncClient(
                base_url=base, timeout=60,
                limits=httpx.Limits(max_connections=len(tokens), max_keepalive_connections=0)))
            clients = [shared] * len(tokens)
        else:
            clients = [await stack.enter_async_context(httpx.AsyncClient(
                base_url=base, timeout=60, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)))
                for _ in tokens]
        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(
            annotate(client, rec, token, strokes=strokes, pause=pause, rng=random.Random(seed * 100003 + i),
                     deadline=deadline) for i, (client, token) in enumerate(zip(clients, tokens)))),
            timeout=CASE_DEADLINE_S + 120)
        wall = time.perf_counter() - t0
    return rec, results, wall


def count_lost(config, task_ids: list[int], results: list[dict]) -> int:
    """Acknowledged edits missing from (or altered in) the stored history, plus tasks whose served final
    labels differ from the replay of that history."""
    from sqlalchemy import select
    from sqlalchemy.orm import undefer

    from backend.store.arrays import decode_array
    from backend.store.db import make_engine, make_sessionmaker
    from backend.edits import Patch
    from backend.store.models import Revision
    from backend.store.storage import storage_from_url

    engine = make_engine(config.database_url)
    storage = storage_from_url(config.storage_url)
    lost = 0
    with make_sessionmaker(engine)() as session:
        for task_id, result in zip(task_ids, results):
            revisions = session.scalars(select(Revision).where(Revision.task_id == task_id)
                                        .order_by(Revision.number).options(undefer(Revision.patch_bytes))).all()
            by_number = {r.number: r for r in revisions}
            for number, (action, params) in result["acked"].items():
                rev = by_number.get(number)
                if rev is None or rev.action != action or (action == "edit" and rev.params != params):
                    lost += 1
            if [r.number for r in revisions] != list(range(len(revisions))):
                lost += 1
                continue
            labels = decode_array(storage.get(revisions[0].labels_key))
            for rev in revisions[1:]:
                # the patch from its row or from the bucket, whichever the server stored it in
                stored = rev.patch_bytes if rev.patch_bytes is not None else storage.get(rev.patch_key)
                Patch.from_bytes(stored).apply(labels, check=True)
            final = result["final"]
            if final is None or final[0] != revisions[-1].number or not np.array_equal(decode_array(final[1]),
                                                                                        labels):
                lost += 1
    engine.dispose()
    return lost


def _ms(values: list[float], q: float) -> float:
    return round(float(np.quantile(np.asarray(values) * 1000, q)), 1)


def _limits(config) -> dict:
    return {"link_writes": config.ratelimit_link_writes, "link_reads": config.ratelimit_link_reads,
            "link_cpu_burst_s": config.link_cpu_burst_s, "link_cpu_share": config.link_cpu_share,
            "store": config.ratelimit_storage_url}


def report(case: str, n: int, rec: Recorder, wall: float, lost: int, workers: int, **extra) -> dict:
    endpoints = {name: {"median_ms": _ms(v, 0.5), "p95_ms": _ms(v, 0.95), "n": len(v)}
                 for name, v in sorted(rec.latency.items())}
    edits = rec.latency.get("edit", [])
    return {"bench": "load", "case": case, "annotators": n,
            "median_ms": endpoints.get("edit", {}).get("median_ms"), "p95_ms": endpoints.get("edit", {}).get("p95_ms"),
            "n": len(edits), "requests": rec.requests, "requests_per_s": round(rec.requests / wall, 1),
            "edits_per_s": round(len(edits) / wall, 1), "errors": len(rec.errors), "lost": lost,
            "duration_s": round(wall, 1), "endpoints": endpoints, "workers": workers,
            "threads": int(os.environ.get("CELLLOOP_THREADS", "4")),
            "stack": "gunicorn gthread + PostgreSQL + S3 (moto server) + Redis rate limits, loopback",
            "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            **extra, **({"first_errors": rec.errors[:3]} if rec.errors else {})}


def _processes() -> list[tuple[int, str, str]]:
    """(pid, process group, command line) of every process this user may read."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out.append((int(entry), fields[2], cmdline))
    return out


def _cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_component(parts: dict) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack: the web server (gunicorn master and workers), the S3
    server, this database's PostgreSQL backends, Redis, and this client. Unlike latency on a shared machine,
    CPU per request does not depend on what else the machine runs."""
    totals = {"web": 0.0, "s3": 0.0, "postgres": 0.0, "redis": 0.0}
    for pid, group, cmdline in _processes():
        if group == str(parts["server"]):
            totals["web"] += _cpu_s(pid)
        elif group == str(parts["s3"]):
            totals["s3"] += _cpu_s(pid)
        elif cmdline.startswith("postgres: ") and f" {parts['database']} " in cmdline:
            totals["postgres"] += _cpu_s(pid)
        elif cmdline.startswith("redis-server"):
            totals["redis"] += _cpu_s(pid)
    totals["client"] = time.process_time()
    return totals


def run_case(config, base: str, parts: dict, case: str, n: int, *, strokes: int, pause: tuple[float, float],
             seed: int, workers: int, new_connections: bool = False) -> dict:
    tasks = make_tasks(config, n, seed)
    cpu0 = cpu_by_component(parts)
    rec, results, wall = asyncio.run(drive(base, [t for _, t in tasks], strokes=strokes, pause=pause, seed=seed,
                                           new_connections=new_connections))
    cpu1 = cpu_by_component(parts)
    cpu_ms = {k: round((cpu1[k] - cpu0[k]) * 1000 / max(rec.requests, 1), 2) for k in cpu0}
    server_ms = sum(v for k, v in cpu_ms.items() if k != "client")
    lost = count_lost(config, [i for i, _ in tasks], results)
    return report(case, n, rec, wall, lost, workers, strokes_each=strokes,
                  cpu_ms_per_request=cpu_ms,
                  # what the server side would sustain with two cores to itself (the client elsewhere)
                  idle_2core_requests_per_s=round(2000 / server_ms, 1) if server_ms else None,
                  pause_s=list(pause) if pause[1] else None, limits=_limits(config),
                  patch_in_row_bytes=config.patch_in_row_bytes)


# one client under the link's own limit of 20 edits a second (CPU per edit does not depend on the pace)
BREAKDOWN_EDITS_PER_S = 15


def _pace(t0: float) -> None:
    time.sleep(max(0.0, t0 + 1 / BREAKDOWN_EDITS_PER_S - time.perf_counter()))


class ComponentClock:
    """CPU seconds of this thread spent inside each wrapped function, exclusive of wrapped functions it calls (so
    the components add up to the whole)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self._stack: list[float] = []
        self._saved: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)
        self._saved.append((owner, attr, fn))

        def wrapper(*args, **kwargs):
            t0 = time.thread_time()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = self._stack.pop()
                spent = time.thread_time() - t0
                self.totals[name] = self.totals.get(name, 0.0) + spent - inner
                if self._stack:
                    self._stack[-1] += spent
        setattr(owner, attr, wrapper)

    def restore(self) -> None:
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)


def _component_clock() -> ComponentClock:
    """Wrap what an edit request runs, by component (before the app is built: some are bound at build time)."""
    from flask_limiter import Limiter
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    from backend.edits import LabelIndex, Patch
    from backend.store.cache import ArrayCache
    from backend.store.storage import LocalStorage, S3Storage
    from backend.tasks import links, revisions as tasks_mod
    from backend.web import common, link_limits, request_limits

    clock = ComponentClock()
    clock.wrap(links, "read_task_token", "token")
    for attr in ("_check_request_limit", "_Limiter__inject_headers"):
        clock.wrap(Limiter, attr, "rate_limit")
    for attr in ("retry_after", "charge"):
        clock.wrap(link_limits.LinkLimits, attr, "link_limits")
    for attr in ("execute", "get", "commit", "rollback", "flush", "scalar", "scalars", "close", "connection"):
        clock.wrap(Session, attr, "sql")
    clock.wrap(Connection, "execute", "sql")
    clock.wrap(tasks_mod, "_edit_known_psycopg", "sql")  # the known-task edit's one statement, straight to psycopg
    for cls in (S3Storage, LocalStorage):
        for attr in ("get", "put", "delete"):
            clock.wrap(cls, attr, "storage_client")
    clock.wrap(tasks_mod, "apply_edit", "tool")
    for owner, attr in ((Patch, "to_bytes"), (Patch, "from_bytes"), (tasks_mod, "encode_array"),
                        (tasks_mod, "decode_array"), (common.BoundedJSONProvider, "loads")):
        clock.wrap(owner, attr, "serialise")
    for owner, attr in ((ArrayCache, "get"), (ArrayCache, "take"), (ArrayCache, "put"), (LabelIndex, "build"),
                        (LabelIndex, "update")):
        clock.wrap(owner, attr, "cache")
    clock.wrap(request_limits, "check_edit", "request_checks")
    return clock


def _component_edits(config, reps: int, seed: int) -> dict:
    """CPU per edit by component, in process (Flask test client) on the same PostgreSQL + S3 + Redis: the web tier's
    own work without the HTTP server (``http_and_flask`` is the rest: routing, request and response objects, the
    test client)."""
    from backend.web.app import create_app

    clock = _component_clock()
    try:
        # limits as the served cases have them (the bench sets them explicitly), so the rate limits' cost is in it
        app = create_app(config)
        (_, token), = make_tasks(config, 1, seed=seed)
        client = app.test_client()
        revision = client.post(f"/api/task/{token}/open").get_json()["revision"]
        rng = random.Random(seed)
        walls = []
        cpu0 = 0.0
        for i in range(reps + 1):
            tool, params = _stroke(rng, 50)
            if i == 1:
                clock.totals.clear()  # the first edit fills this worker's cache: not what a crowd edit costs
                cpu0 = time.thread_time()
            t0 = time.perf_counter()
            resp = client.post(f"/api/task/{token}/edit", json={"base_revision": revision, "tool": tool,
                                                               "params": params})
            if i >= 1:
                walls.append(time.perf_counter() - t0)
            if resp.status_code != 200:
                raise RuntimeError(f"edit-breakdown: HTTP {resp.status_code}: {resp.get_data(as_text=True)[:200]}")
            _pace(t0)
            revision = int(resp.headers["X-Revision"])
        cpu = time.thread_time() - cpu0
    finally:
        clock.restore()
    app.extensions["cellloop.engine"].dispose()
    n = len(walls)
    parts = {f"{k}_ms": round(v * 1000 / n, 3) for k, v in sorted(clock.totals.items())}
    parts["http_and_flask_ms"] = round(cpu * 1000 / n - sum(parts.values()), 3)
    return {"in_process_cpu_ms": round(cpu * 1000 / n, 2), "in_process_median_ms": round(statistics.median(walls) * 1000, 2),
            "cpu_ms_by_component": parts}


def _served_edits(config, base: str, parts: dict, reps: int, seed: int) -> dict:
    """CPU per edit of each process of the stack, from one client sending edits one after another to the running
    gunicorn: ``web`` is what the issue's target counts (the workers' whole CPU: HTTP, logging, everything);
    the S3 server's own CPU is apart (in production the bucket is elsewhere)."""
    import httpx

    (_, token), = make_tasks(config, 1, seed=seed)
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=60) as client:
        revision = client.post(f"/api/task/{token}/open").json()["revision"]
        walls = []
        for i in range(reps + 1):
            tool, params = _stroke(rng, 50)
            if i == 1:
                cpu0 = cpu_by_component(parts)
            t0 = time.perf_counter()
            resp = client.post(f"/api/task/{token}/edit", json={"base_revision": revision, "tool": tool,
                                                               "params": params})
            if i >= 1:
                walls.append(time.perf_counter() - t0)
            if resp.status_code != 200:
                raise RuntimeError(f"edit-breakdown: HTTP {resp.status_code}: {resp.text[:200]}")
            _pace(t0)
            revision = int(resp.headers["X-Revision"])
        cpu1 = cpu_by_component(parts)
    n = len(walls)
    per_edit = {k: round((cpu1[k] - cpu0[k]) * 1000 / n, 2) for k in ("web", "s3", "postgres", "redis")}
    return {"web_cpu_ms": per_edit["web"], "s3_server_cpu_ms": per_edit["s3"],
            "postgres_cpu_ms": per_edit["postgres"], "redis_cpu_ms": per_edit["redis"],
            "median_ms": round(statistics.median(walls) * 1000, 2), "n": n}


def edit_breakdown(config, base: str, parts: dict, reps: int) -> dict:
    """Where one crowd edit's CPU goes on this stack: per process (served), and inside the web tier per component
    (in process, the same code)."""
    served = _served_edits(config, base, parts, reps, seed=99)
    inside = _component_edits(config, reps, seed=98)
    return {"bench": "load", "case": "edit-breakdown", **served, **inside, "task_px": TASK_SIZE,
            "target_web_cpu_ms": 5.0,
            "note": "web_cpu_ms: the gunicorn workers' CPU per 270-px edit (one client, edits one after another); "
                    "s3_server_cpu_ms is moto's own (not the web tier's); cpu_ms_by_component: the same edit run in "
                    "process, this thread's CPU inside each part",
            "limits": _limits(config), "patch_in_row_bytes": config.patch_in_row_bytes,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="load@10 and a short saturate, 10 strokes each")
    parser.add_argument("--case", action="append", help="load@N or saturate (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (threads: CELLLOOP_THREADS)")
    parser.add_argument("--strokes", type=int)
    parser.add_argument("--saturate-annotators", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-in-row-bytes", type=int, default=64 * 1024,
                        help="CELLLOOP_PATCH_IN_ROW_BYTES for the server (0: every patch an object in the bucket)")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new connection for every request (default: one kept-alive connection per annotator, "
                             "as a browser tab)")
    args = parser.parse_args()
    cases = args.case or (["load@10", "saturate"] if args.quick else ["load@10", "load@50", "load@200", "saturate"])
    cases = [c for c in cases if c != "breakdown"]
    strokes = args.strokes or (10 if args.quick else 50)
    tmp = Path(tempfile.mkdtemp(prefix="cellloop-load-"))
    try:
        with production_stack(tmp, args.workers, args.patch_in_row_bytes) as (config, base, parts):
            for i, case in enumerate(cases):
                if case == "saturate":
                    line = run_case(config, base, parts, case, args.saturate_annotators, strokes=strokes, pause=(0, 0),
                                    seed=args.seed + i, workers=args.workers, new_connections=args.new_connections)
                elif case.startswith("load@"):
                    line = run_case(config, base, parts, case, int(case.split("@")[1]), strokes=strokes,
                                    pause=(1.0, 3.0), seed=args.seed + i, workers=args.workers,
                                    new_connections=args.new_connections)
                else:
                    parser.error(f"unknown case {case!r}")
                line["connections"] = "new per request" if args.new_connections else "one per annotator, kept alive"
                print(json.dumps(line), flush=True)
            print(json.dumps(edit_breakdown(config, base, parts, 30 if args.quick else 100)), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

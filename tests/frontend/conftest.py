"""Browser tests: the real editor in Debian's Chromium (Playwright), against the app served by gunicorn on
loopback as `cellloop serve` runs it, on a SQLite file and local storage. One server per module; every test
works on tasks of its own, cut from the labelled Vectra sample, so tests never see each other's edits."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    instance: Path
    env: dict
    parent_url: str       # a page on an origin allowed to frame task pages
    foreign_url: str      # a page on an origin that is not
    tasks: dict = field(default_factory=dict)   # name -> (task id, token)
    image: np.ndarray | None = None

    def token(self, name: str) -> str:
        return self.tasks[name][1]

    def task_url(self, name: str, query: str = "") -> str:
        return f"{self.url}/task/{self.token(name)}{query}"

    def api(self, name: str, path: str = "", body: dict | None = None):
        req = urllib.request.Request(f"{self.url}/api/task/{self.token(name)}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read(), dict(resp.headers)

    def labels(self, name: str) -> np.ndarray:
        from backend.store.arrays import decode_array

        return decode_array(self.api(name, "/labels")[0])

    def info(self, name: str) -> dict:
        return json.loads(self.api(name)[0])

    def state(self, name: str) -> str:
        """The task's state, read from the database (GET on the task link would open it)."""
        from backend.store.models import Task

        with self.session() as db:
            return db.get(Task, self.tasks[name][0]).state.value

    def session(self):
        from backend.store.db import make_engine, make_sessionmaker

        return make_sessionmaker(make_engine(self.env["CELLLOOP_DATABASE_URL"]))()


# each task: a crop (y0, x0, y1, x1) of the Vectra sample with its whole-cell ground truth as layer 0
TASK_BOXES = {
    "brush": (0, 0, 128, 128), "tools": (0, 128, 160, 288), "undo": (128, 0, 256, 128),
    "stale": (128, 128, 256, 256), "frame": (256, 0, 384, 128), "channels": (256, 128, 384, 256),
    "review": (256, 256, 384, 384), "screenshot": (0, 0, 270, 270), "grow": (128, 256, 256, 384),
    "long": (0, 256, 128, 384), "refused": (128, 0, 256, 128),
}


def _build(instance: Path, data: Path, secret: str) -> tuple[dict, np.ndarray]:
    from backend.store import db as dbmod
    from backend.web.app import create_app
    from backend.web.auth import make_task_token
    from backend.cli.admin_commands import create_user
    from backend.config import Config
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService
    from pipeline.io import read_image

    image, _ = read_image(data / "vectra" / "image0.tif")
    image = np.ascontiguousarray(image[..., [1, 0]].astype(np.float32))  # [nuclear, membrane]
    cells = tifffile.imread(data / "vectra" / "image0_wholecell.tif").astype(np.int32)
    labels = np.zeros(cells.shape + (2,), np.int32)
    labels[..., 0] = cells
    config = Config.from_env(instance_dir=instance, secret_key=secret)
    dbmod.upgrade(config.database_url)
    app = create_app(config)
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    create_user(session, "reviewer", PASSWORD, "reviewer")
    project = project_from_image(session, storage, name="vectra", image=image, channel_names=["nuclear", "membrane"])
    batch = Batch(project=project, name="browser")
    session.add(batch)
    svc = TaskService(session, storage)
    made = {}
    for name, (y0, x0, y1, x1) in TASK_BOXES.items():
        made[name] = svc.create_task(batch, (y0, x0, y1, x1), image[y0:y1, x0:x1], labels[y0:y1, x0:x1])
    # 16-bit data, as most multiplexed platforms write it: the editor must keep every level
    image16 = np.clip(image * 3000, 0, 65535).astype(np.uint16)
    project16 = project_from_image(session, storage, name="vectra16", image=image16, channel_names=["nuclear", "membrane"])
    batch16 = Batch(project=project16, name="browser16")
    session.add(batch16)
    made["sixteen"] = svc.create_task(batch16, (0, 0, 64, 64), image16[:64, :64], labels[:64, :64])
    session.commit()
    with app.app_context():
        tasks = {name: (t.id, make_task_token(t)) for name, t in made.items()}
    session.close()
    return tasks, image


class _ParentPage(BaseHTTPRequestHandler):
    """A crowd platform's page: frames the task link given as ?src= and lists the messages it receives."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        from urllib.parse import parse_qs, urlparse

        src = parse_qs(urlparse(self.path).query).get("src", [""])[0]
        body = f"""<!doctype html><html><body>
<ul id="messages"></ul>
<iframe id="task" src="{src}" width="1100" height="700"></iframe>
<script>
window.addEventListener('message', (ev) => {{
  const li = document.createElement('li');
  li.textContent = JSON.stringify({{origin: ev.origin, data: ev.data}});
  document.getElementById('messages').append(li);
}});
</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    instance = tmp_path_factory.mktemp("browser")
    secret = "browser-test-" + secrets.token_hex(8)
    parents = [ThreadingHTTPServer(("127.0.0.1", 0), _ParentPage) for _ in range(2)]
    for p in parents:
        threading.Thread(target=p.serve_forever, daemon=True).start()
    parent_url, foreign_url = (f"http://127.0.0.1:{p.server_address[1]}" for p in parents)
    tasks, image = _build(instance, shared_data, secret)
    port = free_port()
    env = {**os.environ, "CELLLOOP_INSTANCE_DIR": str(instance), "CELLLOOP_SECRET_KEY": secret,
           "CELLLOOP_DATABASE_URL": f"sqlite:///{instance / 'cellloop.sqlite'}",
           "CELLLOOP_STORAGE_URL": str(instance / "storage"), "CELLLOOP_FRAME_ANCESTORS": parent_url,
           "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}",
                             "backend.web.app:create_app()"], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    output = proc.stderr.read() if proc.poll() is not None else ""
                    raise RuntimeError("gunicorn did not start: " + output)
                time.sleep(0.2)
        yield Server(url, instance, env, parent_url, foreign_url, tasks, image)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        for p in parents:
            p.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    yield ctx
    ctx.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

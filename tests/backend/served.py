"""The app as `cellloop serve` runs it (gunicorn, several workers), started on a free loopback port for a test."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from backend.cli.admin_commands import gunicorn_argv

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """gunicorn serving ``config``'s database and storage; logs go to files under ``log_dir``."""

    def __init__(self, config, log_dir: Path, *, workers: int = 2, env: dict | None = None,
                 extra: tuple[str, ...] = ()):
        self.config = config
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.access_log = log_dir / "access.log"
        self.error_log = log_dir / "error.log"
        self.workers = workers
        self.env = {**os.environ, "CELLLOOP_INSTANCE_DIR": str(config.instance_dir),
                    "CELLLOOP_DATABASE_URL": config.database_url, "CELLLOOP_STORAGE_URL": config.storage_url,
                    "CELLLOOP_SECRET_KEY": config.secret_key, **(env or {})}
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Served":
        argv = gunicorn_argv(host="127.0.0.1", port=self.port, workers=self.workers,
                             extra=("--access-logfile", str(self.access_log), "--error-logfile", str(self.error_log),
                                    "--capture-output", "--graceful-timeout", "5", *self.extra))
        # its own process group: a SIGKILL test can take down the master and every worker at once
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}: {self.error_log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not answer within 60 s")

    def kill(self) -> None:
        """SIGKILL to the master and all workers: no shutdown code runs."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def __enter__(self) -> "Served":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

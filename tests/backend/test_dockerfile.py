"""Docker cannot build on the CI machines, so this test runs the Dockerfile's own steps in a fresh venv: it reads
the Dockerfile, copies exactly what its COPY lines copy into an empty app folder, runs its `pip install` there,
applies its ENV, and runs its CMD against PostgreSQL and S3 (configuration only by environment). The server must
migrate the database, answer on the configured port, and stop cleanly on SIGTERM.

The one liberty: the fresh venv sees this test environment's already installed dependencies (a .pth file)
and pip installs the package with --no-deps, so the test needs no network and no second TensorFlow."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from backend.store import db

from .served import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _env_pairs(args: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(args))


def test_dockerfile_is_slim_non_root_and_configured_by_environment():
    steps = dockerfile_instructions()
    base = next(a for i, a in steps if i == "FROM")
    assert base.endswith("-slim")
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    cmd = next(a for i, a in reversed(steps) if i == "CMD")
    assert "cellloop db upgrade" in cmd and cmd.index("db upgrade") < cmd.index("serve")
    # no configuration file is baked in: everything comes from the environment
    copied = [a.split()[0] for i, a in steps if i == "COPY"]
    assert not any(name.endswith((".env", ".ini.local", "secret_key")) for name in copied)


def test_dockerfile_steps_in_a_fresh_venv(tmp_path, pg_url, s3_server, s3_bucket):
    steps = dockerfile_instructions()
    app_dir, data_dir = tmp_path / "app", tmp_path / "data"
    app_dir.mkdir()
    data_dir.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from this checkout leaks in
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "outer_dependencies.pth").write_text("\n".join(outer) + "\n")
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    cmd = None
    for instruction, args in steps:
        if instruction == "ENV":
            env.update(_env_pairs(args))
        elif instruction == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                src = REPO_ROOT / source
                assert src.exists(), f"the Dockerfile copies {source}, which the repository lacks"
                target = app_dir / dest / source if dest.endswith("/") or dest == "./" else app_dir / dest
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
        elif instruction == "RUN" and args.startswith("pip install"):
            argv = shlex.split(args)
            argv[2:2] = ["--no-deps", "--no-build-isolation", "--quiet"]
            subprocess.run([str(venv / "bin" / "python"), "-m", *argv], cwd=app_dir, env=env, check=True,
                           timeout=300)
        elif instruction == "CMD":
            cmd = shlex.split(args) if not args.startswith("[") else __import__("json").loads(args)
    assert cmd is not None
    # the package that runs is the copy in the app folder, not this checkout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import backend; print(backend.__file__)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(app_dir.resolve()), where

    port = free_port()
    env.update({"CELLLOOP_INSTANCE_DIR": str(data_dir), "CELLLOOP_PORT": str(port), "CELLLOOP_WORKERS": "2",
                "CELLLOOP_DATABASE_URL": pg_url, "CELLLOOP_SECRET_KEY": "docker-test-" + "k" * 32,
                "CELLLOOP_STORAGE_URL": f"s3://{s3_bucket}/cl?endpoint_url={s3_server}&region=us-east-1"
                                        "&create_bucket=1"})
    proc = subprocess.Popen(cmd, cwd=app_dir, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the container command did not start serving"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        assert db.current_revision(pg_url) is not None  # the CMD migrated the database first
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stdout.read()

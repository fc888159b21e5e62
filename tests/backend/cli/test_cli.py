"""The admin CLI: one clear line and a non-zero exit on bad input, nothing half-written; and a real
gunicorn server answering on loopback with a demo task."""
from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backend.cli import main


@pytest.fixture
def instance(tmp_path, monkeypatch):
    inst = tmp_path / "inst"
    monkeypatch.setenv("CELLLOOP_INSTANCE_DIR", str(inst))
    monkeypatch.delenv("CELLLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("CELLLOOP_STORAGE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    return inst


def _storage_files(inst: Path) -> list[Path]:
    root = inst / "storage"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_users_create_and_errors(instance, capsys):
    assert main(["users", "create", "alice", "--role", "reviewer", "--password", "long-enough-pw"]) == 0
    assert "created reviewer 'alice'" in capsys.readouterr().out
    assert main(["users", "create", "alice", "--role", "reviewer", "--password", "long-enough-pw"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cellloop users: error: user 'alice' already exists"
    assert main(["users", "create", "bob", "--role", "reviewer", "--password", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["users", "create", "carol", "--role", "emperor", "--password", "long-enough-pw"])


def test_ingest_with_crops_and_links(instance, tmp_path, capsys):
    image = (np.random.default_rng(1).random((3, 300, 500)) * 1000).astype(np.uint16)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    assert main(["ingest", str(path), "--channels", "2,0", "--name", "slide", "--crop", "270"]) == 0
    out = capsys.readouterr().out
    assert "project 'slide'" in out and "300x500" in out and "4 tasks" in out
    assert main(["links", "--project", "slide"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4
    boxes = {(int(r["y0"]), int(r["x0"]), int(r["y1"]), int(r["x1"])) for r in rows}
    assert boxes == {(0, 0, 270, 270), (0, 230, 270, 500), (30, 0, 300, 270), (30, 230, 300, 500)}
    assert all("/task/" in r["url"] for r in rows)
    from backend.store.arrays import decode_array

    stored = [p for p in _storage_files(instance) if p.name == "image.npy.gz" and "tasks" not in p.parts]
    np.testing.assert_array_equal(decode_array(stored[0].read_bytes()), np.moveaxis(image, 0, -1)[..., [2, 0]])


def test_hostile_files_are_refused_and_nothing_is_stored(instance, tmp_path, capsys):
    bad = {}
    bad["text.tif"] = b"this is not a tiff at all"
    good = io.BytesIO()
    tifffile.imwrite(good, np.zeros((64, 64), np.uint16))
    bad["truncated.tif"] = good.getvalue()[:100]
    buf = io.BytesIO()
    np.savez(buf, X=np.array([{"evil": 1}], dtype=object))
    bad["pickle.npz"] = buf.getvalue()
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "fourd.npy", np.zeros((2, 3, 4, 5, 6), np.float32))
    bad["fourd.npy"] = None
    before = _storage_files(instance)
    for name in bad:
        code = main(["ingest", str(tmp_path / name)])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert err.startswith("cellloop ingest: error:") and "\n" not in err, err
        assert "Traceback" not in err
    assert main(["ingest", str(tmp_path / "missing.tif")]) == 2
    assert _storage_files(instance) == before
    assert main(["links"]) == 2 and "no tasks" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_serves_a_task_over_http(tmp_path):
    env = {**os.environ, "CELLLOOP_INSTANCE_DIR": str(tmp_path / "demo")}
    env.pop("CELLLOOP_DATABASE_URL", None)
    env.pop("CELLLOOP_STORAGE_URL", None)
    port = _free_port()
    cmd = [sys.executable, "-m", "backend", "demo", "--source", "synthetic", "--port", str(port),
           "--workers", "2", "--password", "demo-password-1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        link = None
        deadline = time.time() + 120
        while time.time() < deadline and link is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "/task/" in line and line[0].isdigit():
                link = line.strip().split(",")[-1]
        assert link, "".join(lines)
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        with urllib.request.urlopen(link, timeout=10) as r:
            assert r.status == 200 and b"<canvas" in r.read()
        token = link.rsplit("/", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task/{token}", timeout=10) as r:
            import json

            info = json.loads(r.read())
        assert info["shape"] == [270, 270] and info["channels"] == ["nuclear", "membrane"]
        assert info["state"] == "prelabeled"  # reading a task never assigns it
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task/{token}/labels", timeout=10) as r:
            from backend.store.arrays import decode_array

            labels = decode_array(r.read())
        # the baseline pre-labelled the crop: the annotator corrects rather than draws from scratch
        assert labels.shape == (270, 270, 2) and len(np.unique(labels[..., 0])) > 20
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

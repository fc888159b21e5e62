"""The browser editor, measured in Chromium through Playwright against gunicorn on loopback.

    python bench/editor.py            # paint@270, paint@2048, open@2048, pan@2048x8, assist_click@270, open_qc@4096,
                                      # and with --big: open@8192, paint@8192
    python bench/editor.py --quick    # fewer repetitions
    python bench/editor.py --case open   # one kind of case (paint, open, pan; repeatable)
    python bench/editor.py --quick --big --case open --case paint   # the 2048² and 8192² open and paint cases

One JSON line per case, each with ``device`` (the renderer Chromium gave WebGL: SwiftShader, a CPU
rasteriser, on machines without a GPU):

- ``paint@SIZE``: a brush stroke, mouse-up to the server's patch drawn, split into ``queued_ms`` (mouse-up to
  request sent), ``roundtrip_ms`` (request sent to patch decoded), ``apply_ms`` (patch into the labels and the
  label texture) and ``draw_ms`` (the patch's frame, its box drawn again as the editor draws it, waited for on the
  GPU; a frame with the view unchanged draws only the screen over what changed); medians and p95; bytes sent and
  received per edit. The 2048² task has 8 uint16 channels and 4,000 cells.
- ``open@2048``: navigation start to the first view drawn and finished. The 2048² task is big enough to be served
  in chunks: the first view is the coarse level that fits the window (every 2nd pixel, real 16-bit values, all 8
  channels); ``ready_ms`` is navigation start to every full-resolution chunk in (labels editable), and
  ``first_view_mb`` / ``download_mb`` the bytes the first view and the whole task need (gzip .npy).
- ``open@8192`` (``--big``): the same for an 8192² task with 2 uint16 channels and 64,000 cells (the 2048² tissue
  tiled 4 × 4); ``paint@8192`` a stroke on it, as ``paint@2048``, with the server's default 512 MiB array cache
  (8192² labels alone are 512 MiB: each stroke reads the chunks under it, see backend/tasks/revisions.py).
- ``assist_click@270``: an assist click (A) on a cell missing from the labels, mouse-down to the server's cell drawn,
  split like ``paint``; the crop's maps are those a perfect model would give (its labels' training targets).
- ``pan@2048x8``: frames per second while panning and zooming a 2048² 8-channel task, with the WebGL2
  renderer and, in the same run, the plain Canvas2D renderer drawing the same views (``baseline_fps``).
- ``open_qc@4096``: a reviewer opens the whole-image QC task of a stitched 4096² image (2 uint16 channels,
  16,000 cells, 200 listed conflicts) from the queue: click to the first view drawn with its conflicts panel (the
  task is stored in chunks: the coarse level in view); ``ready_ms``: click to every full-resolution chunk in.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_SECRET = "bench-editor-" + "0123456789abcdef" * 2  # long enough for the server to accept
sys.path.insert(0, str(REPO))


def tissue(size: int, cells: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells (whole-cell layer) with nuclei (their cores), and uint16 channels that follow them."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    seeds = rng.random((cells, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size]
    dist, owner = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), workers=-1)
    whole = (owner.reshape(size, size) + 1).astype(np.int32)
    edge = ndimage.morphological_gradient(whole, size=3) > 0
    whole[edge] = 0
    radius = 0.3 * size / np.sqrt(cells)
    nuclear = np.where(dist.reshape(size, size) < radius, whole, 0).astype(np.int32)
    labels = np.stack([whole, nuclear], axis=-1)
    image = np.empty((size, size, channels), np.uint16)
    for c in range(channels):
        gain = rng.random(cells + 1) * 20000
        base = np.where(c % 2 == 0, (nuclear > 0) * 30000.0, edge * 25000.0)
        image[..., c] = np.clip(base + gain[whole] * (c > 1) + rng.normal(0, 500, (size, size)), 0, 65535)
    return image, labels


def tiled_tissue(tile: int, reps: int, cells: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A big task made of one tissue tile repeated reps × reps times, each copy's cells with ids of their own
    (the Voronoi tissue itself would need tens of GB at 8192²)."""
    image, labels = tissue(tile, cells, channels)
    big_image = np.tile(image, (reps, reps, 1))
    big_labels = np.tile(labels, (reps, reps, 1))
    for i in range(reps):
        for j in range(reps):
            block = big_labels[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
            block[block > 0] += (i * reps + j) * (cells + 1)
    return big_image, big_labels


def setup(tmp: Path, quick: bool, big: bool = False) -> tuple[dict, dict]:
    from backend.store import db as dbmod
    from backend.web.app import create_app
    from backend.web.auth import make_task_token
    from backend.config import Config
    from backend.store.models import Batch
    from backend.store.projects import project_from_image
    from backend.tasks import TaskService

    config = Config.from_env(instance_dir=tmp, database_url=f"sqlite:///{tmp / 'db.sqlite'}",
                             storage_url=str(tmp / "storage"), secret_key=BENCH_SECRET)
    dbmod.upgrade(config.database_url)
    app = create_app(config)
    session = app.extensions["cellloop.sessionmaker"]()
    storage = app.extensions["cellloop.storage"]
    tokens = {}
    sizes = {"270": (270, 70, 2), "2048": (2048, 4000, 8)}
    if big:
        sizes["8192"] = (8192, 4000, 2)
    for name, (size, cells, channels) in sizes.items():
        image, labels = tissue(size, cells, channels) if size <= 2048 else tiled_tissue(2048, size // 2048, cells, channels)
        project = project_from_image(session, storage, name=f"bench{name}", image=image,
                                 channel_names=[f"ch{c}" for c in range(channels)])
        batch = Batch(project=project, name="b")
        session.add(batch)
        task = TaskService(session, storage).create_task(batch, (0, 0, size, size), image, labels)
        session.commit()
        with app.app_context():
            tokens[name] = make_task_token(task)
    # a crop with model maps whose labels miss every third cell: for the assist click
    from backend.tasks.maps import keep_crop_maps
    from pipeline.model.maps import maps_from_labels

    image, truth = tissue(270, 70, 2, seed=1)
    labels = truth.copy()
    missing = [int(i) for i in np.unique(truth[..., 0]) if i][::3]
    labels[np.isin(labels, missing)] = 0
    project = project_from_image(session, storage, name="bench-assist", image=image, channel_names=["ch0", "ch1"])
    batch = Batch(project=project, name="b")
    session.add(batch)
    task = TaskService(session, storage).create_task(batch, (0, 0, 270, 270), image, labels)
    session.commit()
    keep_crop_maps(session, storage, task, maps_from_labels(truth), "bench")
    with app.app_context():
        tokens["assist"] = make_task_token(task)
    tokens["assist_points"] = []
    from scipy import ndimage
    for label in missing:
        depth = ndimage.distance_transform_edt(truth[..., 0] == label)
        tokens["assist_points"].append([int(v) for v in np.unravel_index(np.argmax(depth), depth.shape)])
    session.close()
    env = {**os.environ, "CELLLOOP_INSTANCE_DIR": str(tmp), "CELLLOOP_SECRET_KEY": BENCH_SECRET,
           "CELLLOOP_DATABASE_URL": config.database_url, "CELLLOOP_STORAGE_URL": config.storage_url,
           "PYTHONPATH": str(REPO)}
    return tokens, env


def load_average() -> float:
    """The machine's 1-minute load: figures from a shared machine mean little without it."""
    return round(os.getloadavg()[0], 1)


def stats(values) -> dict:
    a = np.asarray(values, float)
    return {"median_ms": round(float(np.median(a)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


def open_editor(browser, url):
    page = browser.new_page(viewport={"width": 1314, "height": 900})
    # an 8192² task opens in over 500 chunk requests: keep every one's timing (the default keeps 250)
    page.add_init_script("performance.setResourceTimingBufferSize(100000)")
    page.goto(url)
    page.wait_for_selector("body[data-ready]", timeout=300_000)
    return page


TO_SCREEN = """([r, c]) => { const e = window.cellloop.editor; const [x, y] = e.view.toCanvas(r, c);
    const rect = e.stage.getBoundingClientRect(); const k = rect.width / e.canvas.width;
    return [rect.left + x * k, rect.top + y * k]; }"""

ONE_EDIT = """async () => {
    const e = window.cellloop.editor;
    await e.idle();
    const t = e.timings.last;
    // the patch's frame may have been drawn already (an animation frame): its box is drawn again, as then
    if (t.box) e.renderer.updateLabels(t.box);
    const t0 = performance.now();
    e.drawNow();
    e.renderer.finish();
    const draw = performance.now() - t0;
    return { ...t, drawMs: draw };
}"""


def paint(browser, url, size, reps) -> dict:
    page = open_editor(browser, url)
    page.evaluate("() => { const e = window.cellloop.editor; e.view.scale = 2; e.view.centerOn(%d, %d); e.drawNow(); }"
                  % (size // 2, size // 2))
    rows = []
    rng = np.random.default_rng(1)
    for i in range(reps + 2):
        r0, c0 = (size // 2 + rng.integers(-100, 100, 2)).tolist()
        page.mouse.move(*page.evaluate(TO_SCREEN, [r0, c0]))
        page.mouse.down()
        page.mouse.move(*page.evaluate(TO_SCREEN, [r0 + 15, c0 + 25]), steps=6)
        page.mouse.up()
        row = page.evaluate(ONE_EDIT)
        if i >= 2:  # the first edits on a worker pay for its caches
            rows.append(row)
    device = page.evaluate("() => window.cellloop.editor.renderer.name")
    revision = page.evaluate("() => window.cellloop.editor.labels.revision")
    page.close()
    server_ms = http_edits(url, revision, size, len(rows))
    total = [r["queuedMs"] + r["roundtripMs"] + r["applyMs"] + r["drawMs"] for r in rows]
    out = {"bench": "editor", "case": f"paint@{size}", **stats(total), "n": len(rows)}
    for key, name in [("queuedMs", "queued"), ("roundtripMs", "roundtrip"), ("applyMs", "apply"), ("drawMs", "draw")]:
        s = stats([r[key] for r in rows])
        out[f"{name}_ms"] = s["median_ms"]
        out[f"{name}_p95_ms"] = s["p95_ms"]
    out["roundtrip_plus_apply_ms"] = round(float(np.median([r["roundtripMs"] + r["applyMs"] for r in rows])), 2)
    # the same kind of stroke posted from Python: what the server and loopback HTTP take without the browser
    out["server_roundtrip_ms"] = stats(server_ms)["median_ms"]
    out["bytes_sent"] = int(np.median([r["sent"] for r in rows]))
    out["bytes_received"] = int(np.median([r["received"] for r in rows]))
    out["device"] = device
    return out


def assist_click(browser, url, points, reps) -> dict:
    page = open_editor(browser, url)
    page.evaluate("() => { const e = window.cellloop.editor; e.view.scale = 2; e.view.centerOn(135, 135); e.drawNow(); }")
    page.keyboard.press("a")
    rows = []
    for i, (r, c) in enumerate(points[:reps + 2]):
        page.evaluate("([r, c]) => { const e = window.cellloop.editor; e.view.centerOn(r, c); e.drawNow(); }", [r, c])
        page.mouse.click(*page.evaluate(TO_SCREEN, [r + 0.5, c + 0.5]))
        row = page.evaluate(ONE_EDIT)
        if i >= 2 and row.get("tool") == "assist_click":  # the first edits on a worker pay for its caches
            rows.append(row)
    device = page.evaluate("() => window.cellloop.editor.renderer.name")
    page.close()
    total = [r["queuedMs"] + r["roundtripMs"] + r["applyMs"] + r["drawMs"] for r in rows]
    out = {"bench": "editor", "case": "assist_click@270", **stats(total), "n": len(rows)}
    for key, name in [("queuedMs", "queued"), ("roundtripMs", "roundtrip"), ("applyMs", "apply"), ("drawMs", "draw")]:
        out[f"{name}_ms"] = stats([r[key] for r in rows])["median_ms"]
    out["bytes_received"] = int(np.median([r["received"] for r in rows]))
    out["device"] = device
    return out


def http_edits(page_url: str, revision: int, size: int, reps: int) -> list[float]:
    api = page_url.replace("/task/", "/api/task/") + "/edit"
    rng = np.random.default_rng(2)
    times = []
    for _ in range(reps):
        r0, c0 = (size // 2 + rng.integers(-100, 100, 2)).tolist()
        body = {"base_revision": revision, "tool": "paint",
                "params": {"layer": 0, "radius": 2, "label": 99999, "overwrite": False,
                           "points": [[r0, c0], [r0 + 15, c0 + 25]]}}
        req = urllib.request.Request(api, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            revision = int(resp.headers["X-Revision"])
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.06)  # under the server's per-link write rate (20 per second), as a person paints
    return times


OPENED = """() => {
    const mark = (name) => { const e = performance.getEntriesByName(name)[0]; return e ? e.startTime : null; };
    const chunk = (e) => /\/(image|labels)\/\d+\/\d+\/\d+$/.test(new URL(e.name).pathname);
    const first = mark('cellloop-first-view');
    const bytes = (entries) => entries.filter(chunk).reduce((a, e) => a + e.encodedBodySize, 0);
    const resources = performance.getEntriesByType('resource');
    return { firstView: first, ready: mark('cellloop-ready'), parts: window.cellloop.editor.timings.open,
             firstViewBytes: first === null ? null : bytes(resources.filter((e) => e.responseEnd <= first)),
             chunkBytes: bytes(resources), device: window.cellloop.editor.renderer.name };
}"""


def open_case(browser, url, reps, size) -> dict:
    """Navigation start to the first view (chunked tasks) or to the whole task drawn (small ones, which load
    whole); ``ready_ms``: to every full-resolution chunk in."""
    rows = []
    for _ in range(reps):
        page = open_editor(browser, url)
        rows.append(page.evaluate(OPENED))
        page.close()
    first = [r["firstView"] if r["firstView"] is not None else r["ready"] for r in rows]
    split = {}
    for key in rows[0]["parts"]:
        values = [r["parts"][key] for r in rows if isinstance(r["parts"].get(key), (int, float))]
        if values:
            split[key[:-2] + "_ms" if key.endswith("Ms") else key] = round(float(np.median(values)), 1)
    out = {"bench": "editor", "case": f"open@{size}", **stats(first), "n": len(rows),
           "ready_ms": stats([r["ready"] for r in rows])["median_ms"], **split}
    if rows[0]["firstViewBytes"] is not None:
        out["first_view_mb"] = round(rows[0]["firstViewBytes"] / 1e6, 1)
        out["download_mb"] = round(rows[0]["chunkBytes"] / 1e6, 1)
    out["device"] = rows[0]["device"]
    return out


PAN = """(frames) => {
    const e = window.cellloop.editor;
    e.view.scale = 1;
    e.view.centerOn(1024, 1024);
    const times = [];
    for (let i = 0; i < frames; i++) {
        const t0 = performance.now();
        e.view.panBy(i % 40 < 20 ? 12 : -12, i % 20 < 10 ? 7 : -7);
        if (i % 10 === 0) e.view.zoomAt(e.view.canvasWidth / 2, e.view.canvasHeight / 2, i % 20 === 0 ? 1.1 : 1 / 1.1);
        e.drawNow();
        e.renderer.finish();
        times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return { median: times[Math.floor(times.length / 2)], canvas: [e.canvas.width, e.canvas.height],
             channels: e.channels.shown().length, device: e.renderer.name };
}"""


def pan(browser, url, frames) -> dict:
    results = {}
    for renderer in ("webgl2", "canvas2d"):
        page = open_editor(browser, f"{url}?renderer={renderer}")
        page.evaluate("() => { for (const c of window.cellloop.editor.channels.channels) c.on = true; }")
        results[renderer] = page.evaluate(PAN, frames)
        page.close()
    gl, cpu = results["webgl2"], results["canvas2d"]
    return {"bench": "editor", "case": "pan@2048x8", "median_ms": round(gl["median"], 2),
            "fps": round(1000 / gl["median"], 1), "baseline_median_ms": round(cpu["median"], 2),
            "baseline_fps": round(1000 / cpu["median"], 1), "speedup": round(cpu["median"] / gl["median"], 1),
            "n": frames, "canvas": gl["canvas"], "channels": gl["channels"], "device": gl["device"],
            "baseline": cpu["device"]}


QC_PASSWORD = "bench-reviewer-password"


def setup_qc(tmp: Path) -> None:
    """A stitched 4096² image with its QC task (as `cellloop stitch` leaves it) and a reviewer to open it."""
    from backend.cli.admin_commands import create_user
    from backend.config import Config
    from backend.loop.qc import refresh_qc
    from backend.store.arrays import encode_array
    from backend.store.db import make_engine, make_sessionmaker
    from backend.store.projects import project_from_image
    from backend.store.storage import storage_from_url

    config = Config.from_env(instance_dir=tmp, database_url=f"sqlite:///{tmp / 'db.sqlite'}",
                             storage_url=str(tmp / "storage"), secret_key=BENCH_SECRET)
    session = make_sessionmaker(make_engine(config.database_url))()
    storage = storage_from_url(config.storage_url)
    create_user(session, "qcbench", QC_PASSWORD, "reviewer")
    image, labels = tissue(4096, 16000, 2, seed=3)
    project = project_from_image(session, storage, name="bench-qc", image=image, channel_names=["DAPI", "CD45"])
    row = project.images[0]
    row.labels_key = f"projects/{project.id}/images/{row.id}/labels/bench.npy.gz"
    storage.put(row.labels_key, encode_array(labels))
    session.commit()
    rng = np.random.default_rng(4)
    conflicts = [{"kind": "disagreement", "crops": [0, 1], "cells": [int(a), int(b)], "pixels": 50,
                  "zone": "overlap", "y": int(y), "x": int(x)}
                 for a, b, y, x in rng.integers(1, 4000, (200, 4))]
    refresh_qc(session, storage, row, labels, conflicts, [[y, x, y + 270, x + 270] for y in range(0, 4096, 230)
                                                            for x in range(0, 4096, 230)], source="bench")
    session.close()


def open_qc_case(browser, base, reps) -> dict:
    times, ready, parts = [], [], []
    for _ in range(reps):
        page = browser.new_page(viewport={"width": 1314, "height": 900})
        page.goto(base + "/")
        if page.locator("input[name=username]").is_visible():
            page.fill("input[name=username]", "qcbench")
            page.fill("input[name=password]", QC_PASSWORD)
            page.click("#login button")
        row = page.locator("tr.task[data-kind=qc]").first
        row.wait_for(timeout=60_000)
        t0 = time.perf_counter()
        row.click()
        # the first view (a chunked QC task's coarse level) drawn with its conflicts listed
        page.wait_for_selector("body[data-qc-shown]", timeout=120_000)
        page.evaluate("() => window.cellloop.editor.renderer.finish()")
        times.append((time.perf_counter() - t0) * 1000)
        page.wait_for_selector("body[data-ready]", timeout=300_000)
        ready.append((time.perf_counter() - t0) * 1000)
        parts.append(page.evaluate("() => window.cellloop.editor.timings.open"))
        device = page.evaluate("() => window.cellloop.editor.renderer.name")
        conflicts = page.locator("#qc-conflicts li.conflict").count()
        page.click("#back")  # back to the queue: the task stays in review for the next repetition
        page.close()
    # the editor's own split of opening (as open@SIZE: the coarse chunks, textures, the first frame, completeMs)
    split = {f"{k[:-2]}_ms" if k.endswith("Ms") else k: round(float(np.median([p[k] for p in parts])), 1)
             for k in parts[0]}
    return {"bench": "editor", "case": "open_qc@4096", **stats(times), "n": len(times),
            "ready_ms": stats(ready)["median_ms"], **split,
            "conflicts": conflicts, "device": device}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", action="append", choices=["paint", "open", "pan", "assist", "open_qc"],
                        help="run only these cases (repeatable; default: all)")
    parser.add_argument("--big", action="store_true", help="also the 8192² task (open@8192, paint@8192; ~2 GB of "
                                                          "browser memory, a minute of setup)")
    args = parser.parse_args(argv)
    reps = 8 if args.quick else 30
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tokens, env = setup(Path(tmp), args.quick, args.big)
        if not args.case or "open_qc" in args.case:
            setup_qc(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", f"127.0.0.1:{port}",
                                   "backend.web.app:create_app()"], env=env, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                cases = [("paint", lambda: paint(browser, f"{base}/task/{tokens['270']}", 270, reps)),
                         ("paint", lambda: paint(browser, f"{base}/task/{tokens['2048']}", 2048, reps)),
                         ("open", lambda: open_case(browser, f"{base}/task/{tokens['2048']}", 3 if args.quick else 5,
                                                    2048)),
                         *([("open", lambda: open_case(browser, f"{base}/task/{tokens['8192']}", 2 if args.quick else 3,
                                                       8192)),
                            ("paint", lambda: paint(browser, f"{base}/task/{tokens['8192']}", 8192, reps))]
                           if args.big else []),
                         ("pan", lambda: pan(browser, f"{base}/task/{tokens['2048']}", 20 if args.quick else 60)),
                         ("assist", lambda: assist_click(browser, f"{base}/task/{tokens['assist']}",
                                                         tokens["assist_points"], reps)),
                         ("open_qc", lambda: open_qc_case(browser, base, 2 if args.quick else 5))]
                for name, case in cases:
                    if not args.case or name in args.case:
                        print(json.dumps({**case(), "load_avg": load_average()}), flush=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

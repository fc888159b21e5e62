"""A simulated annotator (and reviewer) that works through CellLoop's real HTTP API, for tests and benchmarks.

The annotator opens a crowd task link, compares the crop's labels with ground truth and corrects them with the
editor's own operations, one request each, re-reading the labels after every change: delete false cells, merge
over-split ones, split merged ones (seeded watershed), paint missed cells, then fix borders with brush and
eraser strokes until each cell overlaps its truth by ``target_iou``. It counts operations and painted pixels.
``noise`` makes a careless annotator: each needed fix is skipped with that probability.

Only the standard library speaks HTTP here; arrays arrive as gzip ``.npy`` and are read without unpickling.
"""
from __future__ import annotations

import gzip
import http.cookiejar
import io
import json
import struct
import time
import urllib.error
import urllib.parse
import zlib
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

TARGET_IOU = 0.8
# a cell whose pixels lie mostly outside every true cell is a false positive
FALSE_CELL_OVERLAP = 0.5
# a true cell merged or split this often in one pass is oscillating (a split undoing a merge, or a split retried on
# the new parts it makes): a person would stop there, so the annotator leaves it to the hand tools
MAX_TOPOLOGY_FIXES_PER_CELL = 3


RETRY_PAUSES_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, None)


def _retry_after(header: str | None, pause: float) -> float:
    """The server's Retry-After in seconds (rounded down to 0 inside a one-second window), at least ``pause``."""
    try:
        return min(max(float(header), pause), 5.0)
    except (TypeError, ValueError):
        return pause


class APIError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class _HTTP:
    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.headers: dict[str, str] = {}
        # appended to every path: the crowd platform's `?worker=ID` on a task link
        self.query = ""

    def request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        if self.query:
            path += ("&" if "?" in path else "?") + self.query
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        # a rate-limited request (429) did no work, so it is sent again after the server's Retry-After (or a
        # doubling pause), as a well-behaved client would; a person never edits at the limit's pace
        for pause in RETRY_PAUSES_S:
            req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
            try:
                with self.opener.open(req, timeout=120) as resp:
                    return resp.status, dict(resp.headers), resp.read()
            except urllib.error.HTTPError as exc:
                if exc.code != 429 or pause is None:
                    raise self._error(exc) from None
                exc.read()
                time.sleep(_retry_after(exc.headers.get("Retry-After"), pause))
        raise AssertionError("the last pause is None: the loop returns or raises")

    @staticmethod
    def _error(exc: urllib.error.HTTPError) -> APIError:
        payload = exc.read()
        try:
            message = json.loads(payload).get("error", payload[:200])
        except ValueError:
            message = payload[:200]
        return APIError(exc.code, str(message))

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        return json.loads(self.request(method, path, body)[2])


def apply_patch(labels: np.ndarray, data: bytes) -> None:
    """Apply an edit reply (the server's binary patch: a 24-byte header ``CLPT``, version, layer, box as
    little-endian u32, then zlib of the int32 before and after windows) to ``labels`` in place, as the editor
    does, instead of downloading the labels again."""
    magic, version, layer, y0, x0, y1, x1 = struct.unpack_from("<4sBBxxIIII", data)
    if magic != b"CLPT" or version != 1:
        raise ValueError("not a CellLoop patch")
    h, w = y1 - y0, x1 - x0
    if h and w:
        body = np.frombuffer(zlib.decompress(data[24:]), dtype="<i4").reshape(2, h, w)
        labels[y0:y1, x0:x1, layer] = body[1]


def decode_npy(data: bytes) -> np.ndarray:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass
class Effort:
    """What the annotator did: operations by tool, pixels painted and erased, true cells seen. ``cells`` counts
    each distinct true cell once (per layer corrected), however many overlapping crops show it; ``crop_cells``
    counts it once per crop (what an annotator looks at; 1.6-1.9x more with 40-px overlaps)."""

    ops: Counter = field(default_factory=Counter)
    painted_px: int = 0
    erased_px: int = 0
    cells: int = 0
    crop_cells: int = 0

    @property
    def n_ops(self) -> int:
        return int(sum(self.ops.values()))

    def add(self, other: "Effort") -> None:
        self.ops.update(other.ops)
        self.painted_px += other.painted_px
        self.erased_px += other.erased_px
        self.cells += other.cells
        self.crop_cells += other.crop_cells

    def as_dict(self) -> dict:
        return {"ops": self.n_ops, "by_tool": dict(self.ops), "painted_px": self.painted_px,
                "erased_px": self.erased_px, "cells": self.cells, "crop_cells": self.crop_cells,
                "ops_per_100_cells": round(100 * self.n_ops / self.cells, 1) if self.cells else None,
                "ops_per_100_crop_cells": round(100 * self.n_ops / self.crop_cells, 1) if self.crop_cells else None}


# --- deciding the next correction ----------------------------------------------------------------------------

def _overlaps(pred: np.ndarray, truth: np.ndarray):
    n_p, n_t = int(pred.max()) + 1, int(truth.max()) + 1
    table = np.bincount(pred.ravel().astype(np.int64) * n_t + truth.ravel(), minlength=n_p * n_t)
    return table.reshape(n_p, n_t)


def _inner_point(mask: np.ndarray) -> list[int]:
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return [int(y), int(x)]


def _clear_of(mask: np.ndarray) -> np.ndarray:
    """Pixels where a radius-1 brush (the pixel and its 4 neighbours) touches nothing of ``mask``."""
    return ~ndi.binary_dilation(mask, structure=ndi.generate_binary_structure(2, 1))


def _strokes(points_mask: np.ndarray, max_points: int = 400) -> list[list[list[int]]]:
    """Brush strokes (polylines of adjacent pixels) through every pixel of ``points_mask``: one per 8-connected
    piece, walked row by row so consecutive points are neighbours (a sweep between them stays on them)."""
    pieces, n = ndi.label(points_mask, structure=np.ones((3, 3)))
    strokes = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(pieces == i)
        chain, row_runs = [], {}
        for y, x in zip(ys.tolist(), xs.tolist()):
            row_runs.setdefault(y, []).append(x)
        forward = True
        last = None
        for y in sorted(row_runs):
            xs_row = sorted(row_runs[y]) if forward else sorted(row_runs[y], reverse=True)
            for x in xs_row:
                if last is not None and max(abs(last[0] - y), abs(last[1] - x)) > 1:
                    strokes.append(chain)
                    chain = []
                chain.append([y, x])
                last = (y, x)
            forward = not forward
        strokes.append(chain)
    return [s[i:i + max_points] for s in strokes for i in range(0, len(s), max_points)]


def _box(slices, pad: int, shape):
    ys, xs = slices
    return (slice(max(ys.start - pad, 0), min(ys.stop + pad, shape[0])),
            slice(max(xs.start - pad, 0), min(xs.stop + pad, shape[1])))


def _candidates(pred: np.ndarray, truth: np.ndarray, target_iou: float):
    """Needed fixes in the order an annotator works (topology first, then borders), as (key, kind, cells):
    cheap bookkeeping from the overlap table only; masks are looked at for the one fix chosen."""
    table = _overlaps(pred, truth)
    area_p = table.sum(axis=1)
    area_t = table.sum(axis=0)
    has_p = area_p > 0
    has_p[0] = False
    has_t = area_t > 0
    has_t[0] = False
    for p in np.flatnonzero(has_p & (table[:, 1:].sum(axis=1) < FALSE_CELL_OVERLAP * area_p)):
        yield ("delete", int(p)), "delete", (int(p),)
    if table.shape[1] > 1 and table.shape[0] > 1:
        # each predicted cell's main true cell, and each true cell's main predicted cell
        main_t = np.argmax(table[:, 1:], axis=1) + 1
        share_t = table[np.arange(len(table)), main_t]
        owned = has_p & (share_t > 0.5 * area_p)
        for t in np.unique(main_t[owned]):
            parts = np.flatnonzero(owned & (main_t == t))
            if len(parts) > 1:
                parts = parts[np.argsort(-table[parts, t], kind="stable")]
                yield ("merge", int(t), int(parts[1])), "merge", (int(parts[0]), int(parts[1]))
        host = np.argmax(table[1:, :], axis=0) + 1
        hosted = table[host, np.arange(table.shape[1])]
        inside = has_t & (hosted > 0.5 * area_t) & (hosted >= 4)
        for p in np.unique(host[inside]):
            ts = np.flatnonzero(inside & (host == p))
            if len(ts) > 1:
                yield ("split", int(p)), "split", (int(p), *map(int, ts))
        for t in np.flatnonzero(has_t & (hosted < 0.5 * area_t)):
            yield ("paint-new", int(t)), "paint-new", (int(t),)
        iou = hosted / np.maximum(area_p[host] + area_t - hosted, 1)
        # borders are fixed only between a true cell and a predicted cell that are each other's main match:
        # two true cells fixing one shared predicted cell would undo each other's strokes
        mutual = main_t[host] == np.arange(table.shape[1])
        for t in np.flatnonzero(has_t & (hosted > 0) & (iou < target_iou) & mutual):
            for kind in ("grow", "grow-rim", "trim"):
                yield (kind, int(t)), kind, (int(host[t]), int(t))
    else:
        for t in np.flatnonzero(has_t):
            yield ("paint-new", int(t)), "paint-new", (int(t),)


def next_fix(pred: np.ndarray, truth: np.ndarray, *, target_iou: float = TARGET_IOU, skip=frozenset()):
    """The next correction for one layer as (key, tool, params), or None when the layer is good enough.
    ``key`` names the cell and kind of fix, so a caller can skip fixes that changed nothing."""
    true_boxes = ndi.find_objects(truth)
    pred_boxes = ndi.find_objects(pred)
    for key, kind, cells in _candidates(pred, truth, target_iou):
        if key in skip:
            continue
        if kind == "delete":
            return key, "delete", {"label": cells[0]}
        if kind == "merge":
            return key, "merge", {"a": cells[0], "b": cells[1]}
        if kind == "split":
            p, ts = cells[0], cells[1:]
            box = _box(pred_boxes[p - 1], 1, pred.shape)
            seeds = []
            for t in ts:
                y, x = _inner_point((pred[box] == p) & (truth[box] == t))
                seeds.append([y + box[0].start, x + box[1].start])
            if len({tuple(s) for s in seeds}) == len(seeds):
                return key, "split", {"seeds": seeds, "label": p}
            continue
        if kind == "paint-new":
            t = cells[0]
            box = _box(true_boxes[t - 1], 1, truth.shape)
            free = (truth[box] == t) & (pred[box] == 0)
            if free.sum() < 0.5 * (truth[box] == t).sum():
                continue  # other cells cover it: their own border fixes free it first
            dist = ndi.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), free.shape)
            radius = max(1, int(dist.max() * 0.6))
            return key, "paint", {"label": int(pred.max()) + 1, "radius": radius,
                                  "points": [[int(y) + box[0].start, int(x) + box[1].start]]}
        p, t = cells
        box = _box(_union(true_boxes[t - 1], pred_boxes[p - 1]), 2, truth.shape)
        true_mask, pred_mask, window = truth[box] == t, pred[box] == p, pred[box]
        missing = true_mask & ~pred_mask
        # a stroke may only spill where it does no harm: overwriting, onto pixels already this cell's; in the
        # default exclude mode (other cells protected), onto nothing but this cell; erasing, onto no true pixel
        if kind == "grow":
            mask, tool, params = missing & _clear_of(~true_mask & ~pred_mask), "paint", {"label": p, "overwrite": True}
        elif kind == "grow-rim":
            mask, tool, params = (missing & (window == 0) & _clear_of(~true_mask & (window == 0)), "paint",
                                  {"label": p})
        else:
            mask, tool, params = pred_mask & ~true_mask & _clear_of(pred_mask & true_mask), "erase", {"label": p}
        if mask.any():
            stroke = max(_strokes(mask), key=len)
            points = [[y + box[0].start, x + box[1].start] for y, x in stroke]
            return key, tool, {**params, "radius": 1, "points": points}
    return None


def _union(a, b):
    if b is None:
        return a
    return (slice(min(a[0].start, b[0].start), max(a[0].stop, b[0].stop)),
            slice(min(a[1].start, b[1].start), max(a[1].stop, b[1].stop)))


# --- through the API -----------------------------------------------------------------------------------------

class TaskClient:
    """One crowd task, driven through its token link like the browser editor does."""

    def __init__(self, base_url: str, token: str, worker: str | None = None):
        self.http = _HTTP(base_url)
        if worker is not None:
            self.http.query = urllib.parse.urlencode({"worker": worker})
        self.path = f"/api/task/{token}"
        self.revision = None

    def open(self) -> dict:
        try:  # the editor's explicit open (newer servers); GET alone works on older ones
            self.http.request("POST", self.path + "/open", {})
        except APIError as exc:
            if exc.status not in (404, 405):
                raise
        info = self.http.json("GET", self.path)
        self.revision = info["revision"]
        return info

    def labels(self) -> np.ndarray:
        _, headers, body = self.http.request("GET", self.path + "/labels")
        self.revision = int(headers.get("X-Revision", self.revision))
        return decode_npy(body)

    def edit(self, labels: np.ndarray, tool: str, params: dict, layer: int) -> None:
        """One edit; ``labels`` (the current labels) are brought up to date from the reply's patch."""
        _, headers, body = self.http.request("POST", self.path + "/edit",
                                             {"base_revision": self.revision, "tool": tool,
                                              "params": {**params, "layer": layer}})
        self.revision = int(headers.get("X-Revision", self.revision))
        apply_patch(labels, body)

    def submit(self) -> dict:
        return self.http.json("POST", self.path + "/submit", {"base_revision": self.revision})


def _oscillating(key: tuple, params: dict, truth: np.ndarray, counts: Counter) -> bool:
    """Count a merge or split by the true cells it is for; True once one of them has had more than
    MAX_TOPOLOGY_FIXES_PER_CELL of either in this pass (the two undo each other, or a split that cannot separate two cells
    is retried on each new part it makes)."""
    if key[0] == "merge":
        cells = {("merge", key[1])}
    elif key[0] == "split":
        cells = {("split", int(truth[y, x])) for y, x in params["seeds"]}
    else:
        return False
    counts.update(cells)
    return any(counts[c] > MAX_TOPOLOGY_FIXES_PER_CELL for c in cells)


def annotate(base_url: str, token: str, truth: np.ndarray, *, layers=(0,), target_iou: float = TARGET_IOU,
             noise: float = 0.0, seed: int = 0, max_ops: int | None = None, submit: bool = True,
             worker: str | None = None) -> Effort:
    """Correct one task towards ``truth`` (the crop's (h, w, 2) or (h, w) ground truth) and submit it; ``worker``:
    the crowd platform's worker id the link is opened with (``?worker=ID``)."""
    rng = np.random.default_rng(seed)
    truth = truth if truth.ndim == 3 else truth[..., None]
    client = TaskClient(base_url, token, worker=worker)
    client.open()
    effort = Effort()
    for layer in layers:
        true_layer = truth[..., layer]
        effort.cells += int(len(np.unique(true_layer)) - 1)  # one crop: its distinct cells are its crop cells
        effort.crop_cells += int(len(np.unique(true_layer)) - 1)
        budget = max_ops if max_ops is not None else 12 * (int(true_layer.max()) + 5)
        skip: set = set()
        merges: Counter = Counter()
        labels = client.labels()
        while budget > 0:
            fix = next_fix(labels[..., layer], true_layer, target_iou=target_iou, skip=frozenset(skip))
            if fix is None:
                break
            key, tool, params = fix
            if _oscillating(key, params, true_layer, merges):
                skip.add(key)
                continue
            skip.add(key)  # a fix is tried once; if it changed nothing it is not repeated
            if noise and rng.random() < noise:
                continue
            before = labels[..., layer].copy()
            client.edit(labels, tool, params, layer)
            after = labels[..., layer]
            changed = before != after
            effort.ops[tool] += 1
            effort.painted_px += int((changed & (after > 0)).sum())
            effort.erased_px += int((changed & (after == 0)).sum())
            if changed.any() and key[0] in ("grow", "grow-rim", "trim"):
                skip.discard(key)  # borders take several strokes
            budget -= 1
    if submit:
        client.submit()
    return effort


class Reviewer:
    """An expert who logs in and approves (or rejects) submitted tasks through the review API."""

    def __init__(self, base_url: str, username: str, password: str):
        self.http = _HTTP(base_url)
        csrf = self.http.json("GET", "/api/auth/me")["csrf_token"]
        self.http.headers["X-CSRF-Token"] = csrf
        reply = self.http.json("POST", "/api/auth/login", {"username": username, "password": password})
        self.http.headers["X-CSRF-Token"] = reply.get("csrf_token", csrf)

    def waiting(self) -> list[dict]:
        return self.http.json("GET", "/api/review/tasks")["tasks"]

    def approve_all(self) -> int:
        n = 0
        for task in self.waiting():
            self.http.json("POST", f"/api/review/tasks/{task['id']}/approve", {})
            n += 1
        return n


def annotate_batch(base_url: str, rows: list[dict], truths: dict, **options) -> Effort:
    """Annotate every task of a published batch: ``rows`` are the publish CSV's rows (image, y0, x0, y1, x1,
    url), ``truths`` the ground truth of each image by name."""
    total = Effort()
    for i, row in enumerate(rows):
        y0, x0, y1, x1 = (int(row[k]) for k in ("y0", "x0", "y1", "x1"))
        token = row["url"].rsplit("/task/", 1)[1]
        truth = truths[row["image"]][y0:y1, x0:x1]
        total.add(annotate(base_url, token, truth, seed=i, **options))
    total.cells = distinct_cells(rows, truths, options.get("layers", (0,)))
    return total


def distinct_cells(rows: list[dict], truths: dict, layers=(0,)) -> int:
    """True cells the crops of ``rows`` show, each counted once per image (and per layer in ``layers``)."""
    n = 0
    for name in sorted({row["image"] for row in rows}):
        truth = truths[name] if truths[name].ndim == 3 else truths[name][..., None]
        seen = np.zeros(truth.shape[:2], bool)
        for row in rows:
            if row["image"] == name:
                seen[int(row["y0"]):int(row["y1"]), int(row["x0"]):int(row["x1"])] = True
        for layer in layers:
            n += int(len(np.unique(truth[..., layer][seen])) - (1 if (truth[..., layer][seen] == 0).any() else 0))
    return n


# --- the assisted annotator: the editor's model-assisted tools where they reach the target -------------------

ASSIST_SENSITIVITIES = (0.5, 0.7, 0.3, 0.9, 0.1)  # the slider positions an annotator tries, in order


def _patched(labels: np.ndarray, data: bytes) -> np.ndarray:
    out = labels.copy()
    apply_patch(out, data)
    return out


def _reaches(layer: np.ndarray, truth: np.ndarray, cells, target_iou: float) -> bool:
    """Every true cell of ``cells`` has a predicted cell overlapping it by ``target_iou``."""
    for t in cells:
        true = truth == t
        ids, counts = np.unique(layer[true], return_counts=True)
        best = 0.0
        for p, inter in zip(ids.tolist(), counts.tolist()):
            if p:
                best = max(best, inter / (true.sum() + (layer == p).sum() - inter))
        if best < target_iou:
            return False
    return True


def next_assist_fix(client: "TaskClient", labels: np.ndarray, truth: np.ndarray, layer: int, *,
                    target_iou: float = TARGET_IOU, skip=frozenset()):
    """The next correction made with an assist tool, as (key, tool, params), or None. An annotator previews
    what the model would draw (``/preview``, as the editor's box slider does) and applies it only where the
    cells it fixes then reach ``target_iou``: click -> cell for a missed cell, box -> re-segment (trying a few
    sensitivities) for cells split in parts or merged together. Everything else is left to ``next_fix``."""
    pred = labels[..., layer]
    true_boxes = ndi.find_objects(truth)
    pred_boxes = ndi.find_objects(pred)
    for key, kind, cells in _candidates(pred, truth, target_iou):
        akey = ("assist",) + key
        if akey in skip or akey in client.failed or kind not in ("paint-new", "merge", "split"):
            continue
        if kind == "paint-new":
            t = cells[0]
            box = _box(true_boxes[t - 1], 1, truth.shape)
            free = (truth[box] == t) & (pred[box] == 0)
            if not free.any():
                continue
            dist = ndi.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), free.shape)
            params = {"point": [int(y) + box[0].start, int(x) + box[1].start]}
            tries, tool, wanted = [params], "assist_click", (t,)
        else:
            ts = (key[1],) if kind == "merge" else cells[1:]  # merge: key names the true cell, cells its parts
            ps = cells if kind == "merge" else cells[:1]
            region = None
            for t in ts:
                region = true_boxes[t - 1] if region is None else _union(region, true_boxes[t - 1])
            for p in ps:
                region = _union(region, pred_boxes[p - 1])
            region = _box(region, 2, truth.shape)
            box = [region[0].start, region[1].start, region[0].stop, region[1].stop]
            tries = [{"box": box, "sensitivity": s} for s in ASSIST_SENSITIVITIES]
            tool, wanted = "assist_box", ts
        for params in tries:
            try:
                preview = client.preview(tool, params, layer)
            except APIError as exc:
                if exc.status == 400:  # the model sees no cell there, or the task has no maps
                    break
                raise
            if _reaches(_patched(labels, preview)[..., layer], truth, wanted, target_iou):
                return akey, tool, params
        client.failed.add(akey)  # not previewed again: the hand tools fix this one
    return None


@dataclass
class AssistedEffort(Effort):
    """Effort with the assist tools: ``model_px`` are the pixels the model drew (not painted by hand), and
    ``previews`` how often the annotator looked at what the model would draw before deciding."""

    model_px: int = 0
    previews: int = 0

    def add(self, other: "Effort") -> None:
        super().add(other)
        self.model_px += getattr(other, "model_px", 0)
        self.previews += getattr(other, "previews", 0)

    def as_dict(self) -> dict:
        return {**super().as_dict(), "model_px": self.model_px, "previews": self.previews}


class AssistedTaskClient(TaskClient):
    """A task client that can also ask for previews (``POST /preview``: the patch an edit would make)."""

    def __init__(self, base_url: str, token: str):
        super().__init__(base_url, token)
        self.previews = 0
        self.failed: set = set()

    def preview(self, tool: str, params: dict, layer: int) -> bytes:
        self.previews += 1
        _, _, body = self.http.request("POST", self.path + "/preview",
                                       {"base_revision": self.revision, "tool": tool,
                                        "params": {**params, "layer": layer}})
        return body


def annotate_assisted(base_url: str, token: str, truth: np.ndarray, *, layers=(0,), target_iou: float = TARGET_IOU,
                      max_ops: int | None = None, submit: bool = True) -> AssistedEffort:
    """``annotate`` with the assist tools first wherever their preview reaches ``target_iou``; the hand tools
    (``next_fix``) for the rest. Operations are counted as ``annotate`` counts them (one per request);
    pixels the model drew go to ``model_px``, not ``painted_px``."""
    truth = truth if truth.ndim == 3 else truth[..., None]
    client = AssistedTaskClient(base_url, token)
    client.open()
    effort = AssistedEffort()
    for layer in layers:
        true_layer = truth[..., layer]
        effort.cells += int(len(np.unique(true_layer)) - 1)
        budget = max_ops if max_ops is not None else 12 * (int(true_layer.max()) + 5)
        skip: set = set()
        merges: Counter = Counter()
        labels = client.labels()
        while budget > 0:
            fix = (next_assist_fix(client, labels, true_layer, layer, target_iou=target_iou, skip=frozenset(skip))
                   or next_fix(labels[..., layer], true_layer, target_iou=target_iou, skip=frozenset(skip)))
            if fix is None:
                break
            key, tool, params = fix
            if _oscillating(key, params, true_layer, merges):
                skip.add(key)
                continue
            skip.add(key)
            before = labels[..., layer].copy()
            client.edit(labels, tool, params, layer)
            after = labels[..., layer]
            changed = before != after
            effort.ops[tool] += 1
            drawn = int((changed & (after > 0)).sum())
            if tool.startswith("assist_"):
                effort.model_px += drawn
            else:
                effort.painted_px += drawn
            effort.erased_px += int((changed & (after == 0)).sum())
            if changed.any() and key[0] in ("grow", "grow-rim", "trim"):
                skip.discard(key)
            budget -= 1
    effort.previews = client.previews
    if submit:
        client.submit()
    return effort


def annotate_batch_assisted(base_url: str, rows: list[dict], truths: dict, **options) -> AssistedEffort:
    """``annotate_batch`` with ``annotate_assisted``."""
    total = AssistedEffort()
    for row in rows:
        y0, x0, y1, x1 = (int(row[k]) for k in ("y0", "x0", "y1", "x1"))
        token = row["url"].rsplit("/task/", 1)[1]
        total.add(annotate_assisted(base_url, token, truths[row["image"]][y0:y1, x0:x1], **options))
    return total


# --- workers of different skill (crowd quality: gold tasks, replicas, consensus) ----------------------------

@dataclass(frozen=True)
class Skill:
    """How a simulated crowd worker goes wrong. The worker corrects the prelabel through the API towards what
    they believe the cells are: the truth with ``miss`` of its cells left out, ``merge`` of the touching
    neighbour pairs drawn as one cell, and each cell's border moved in or out by ``border_px`` (sloppy borders);
    ``noise`` is ``annotate``'s share of needed fixes skipped."""

    miss: float = 0.0
    merge: float = 0.0
    border_px: int = 0
    noise: float = 0.0


CAREFUL = Skill()
MIDDLING = Skill(miss=0.1, merge=0.1, border_px=1, noise=0.1)
CARELESS = Skill(miss=0.3, merge=0.3, border_px=2, noise=0.4)


def touching_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (a < b) of cells sharing a 4-connected edge."""
    pairs = set()
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
        edge = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[edge], b[edge]), np.maximum(a[edge], b[edge])
        pairs.update(zip(lo.tolist(), hi.tolist()))
    return sorted(pairs)


def _sloppy_borders(labels: np.ndarray, px: int, rng) -> np.ndarray:
    """Each cell's border moved by ``px``: about half the cells shrink (their rim erased), the others grow into
    the background next to them."""
    n = int(labels.max()) + 1
    grows = rng.random(n) < 0.5
    grows[0] = False
    size = 2 * px + 1
    same = ndi.maximum_filter(labels, size=size) == ndi.minimum_filter(labels, size=size)
    out = labels.copy()
    rim = (labels > 0) & ~same & ~grows[labels]
    out[rim] = 0
    spread = ndi.maximum_filter(labels, size=size)
    into = (labels == 0) & (spread > 0) & grows[spread]
    out[into] = spread[into]
    return out


def corrupt_truth(truth: np.ndarray, skill: Skill, seed: int = 0) -> np.ndarray:
    """What a worker of ``skill`` believes the cells of one (H, W) label layer are (see ``Skill``)."""
    rng = np.random.default_rng(seed)
    out = np.asarray(truth).astype(np.int32).copy()
    if skill.merge:
        taken: set = set()
        for a, b in touching_pairs(out):
            if a in taken or b in taken or rng.random() >= skill.merge:
                continue
            out[out == b] = a
            taken.update((a, b))
    if skill.miss:
        ids = np.unique(out)
        ids = ids[ids > 0]
        gone = ids[rng.random(len(ids)) < skill.miss]
        out[np.isin(out, gone)] = 0
    if skill.border_px:
        out = _sloppy_borders(out, skill.border_px, rng)
    return out


def annotate_with_skill(base_url: str, token: str, truth: np.ndarray, skill: Skill, *, seed: int = 0,
                        layers=(0,), **options) -> Effort:
    """``annotate`` by a worker of ``skill``: the crop's truth ((h, w, 2) or (h, w)) as this worker sees it,
    corrected towards through the real API, one edit per request, then submitted."""
    truth = truth if truth.ndim == 3 else truth[..., None]
    believed = np.stack([corrupt_truth(truth[..., layer], skill, seed=seed * 7 + layer) if layer in layers
                         else truth[..., layer] for layer in range(truth.shape[-1])], axis=-1)
    return annotate(base_url, token, believed, layers=layers, noise=skill.noise, seed=seed, **options)

"""Latency of every label editing tool, against the naive whole-array way.

    python bench/edits.py            # full run
    python bench/edits.py --quick    # fewer repetitions, for a smoke check

Prints one JSON line per case, ``TOOL@2048`` (a 2048x2048 layer of ~4,000 cells) and
``TOOL@270`` (a crop-sized layer). ``median_ms``/``p95_ms`` time ``apply_edit`` with a
LabelIndex, as a long-lived caller would use it; ``no_index_median_ms`` times the same calls
without one (label boxes found by scanning the layer). ``baseline_median_ms`` times the same
edit done the naive way (recompute over the whole array and return the whole array) in the
same run; ``speedup`` is baseline over median; ``agree`` says whether both ways produced the
same labels. ``commit_median_ms`` is what the server adds per edit: apply the patch in place,
update the index, encode the patch for the browser.
``flood`` fills a hole inside a cell (the common use); ``flood_background`` fills the
background of the whole layer, which is a whole-image edit by nature.
``assist_click`` clicks the centre of a cell missing from the labels, ``assist_box`` re-segments a box of
about four cells (sensitivity 0.5), both from the maps a perfect model would give for the tissue (its training
targets: real maps are noisier, which costs the watershed about the same); they have no naive counterpart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import ndimage
from skimage.filters import sobel, threshold_otsu
from skimage.segmentation import flood as sk_flood
from skimage.segmentation import watershed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.edits import LabelIndex, apply_edit, next_label_id  # noqa: E402

CELL_SPACING = 32     # a jittered grid: (2048 / 32)^2 = 4096 cells
CELL_RADIUS = 11.5    # ~415 px per cell
FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = ndimage.generate_binary_structure(2, 2)


def make_tissue(size, rng):
    """Labels (size, size, 2) and a 2-channel image [nuclear, membrane], with defects to fix:
    holes punched in some cells, stray pixels next to others, and cells missing from the
    whole-cell layer (still visible in the image) for threshold."""
    n = size // CELL_SPACING
    centres = (np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
               * CELL_SPACING + CELL_SPACING // 2)
    centres = centres + rng.integers(-6, 7, centres.shape)
    ids = rng.permutation(len(centres)) + 1
    seeds = np.zeros((size, size), np.int32)
    seeds[centres[:, 0], centres[:, 1]] = ids
    dist, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[iy, ix]
    whole = np.where(dist <= CELL_RADIUS, owner, 0).astype(np.int32)
    nuclear = np.where(dist <= CELL_RADIUS / 2, owner, 0).astype(np.int32)
    boundary = ndimage.grey_dilation(owner, size=3) != ndimage.grey_erosion(owner, size=3)
    image = np.stack([
        np.exp(-(dist / (CELL_RADIUS / 2)) ** 2),
        ndimage.gaussian_filter(boundary.astype(np.float64), 1.0) * 2.5,
    ], -1)
    image = (image + rng.normal(0, 0.05, image.shape)).astype(np.float32)
    order = rng.permutation(len(ids))
    # most cells stay; ~150 go missing from the labels (for threshold), the rest split
    # between untouched cells and cells with a hole or a stray pixel
    n_missing = max(len(ids) // 27, 4)
    groups = [order[n_missing:][0::3], order[n_missing:][1::3], order[n_missing:][2::3],
              order[:n_missing]]
    plain = [(int(ids[i]), tuple(int(v) for v in centres[i])) for i in groups[0]]
    holed, strayed = [], []
    for i in groups[1]:
        y, x = centres[i]
        whole[y - 1:y + 2, x - 1:x + 2] = 0
        holed.append((int(ids[i]), (int(y), int(x))))
    for i in groups[2]:
        y, x = centres[i]
        if x + 13 < size and whole[y, x + 13] == 0:
            whole[y, x + 13] = ids[i]
            strayed.append((int(ids[i]), (int(y), int(x))))
    missing = [(int(ids[i]), tuple(int(v) for v in centres[i])) for i in groups[3]]
    whole[np.isin(whole, [m[0] for m in missing])] = 0
    labels = np.stack([whole, nuclear], -1)
    return labels, image, {"plain": plain, "holed": holed, "strayed": strayed, "missing": missing}


def neighbour_of(labels, y, x):
    """A different cell near (y, x), for merge and swap."""
    for dy, dx in ((0, CELL_SPACING), (CELL_SPACING, 0), (0, -CELL_SPACING), (-CELL_SPACING, 0)):
        yy, xx = y + dy, x + dx
        if 0 <= yy < labels.shape[0] and 0 <= xx < labels.shape[1] and labels[yy, xx, 0]:
            return int(labels[yy, xx, 0])
    return None


def requests(tool, labels, cells):
    """Realistic params for ``tool`` on different cells, one per repetition."""
    h, w = labels.shape[:2]
    out = []
    inside = lambda y, x, m: m <= y < h - m and m <= x < w - m  # noqa: E731
    if tool == "flood":
        for label, (y, x) in cells["holed"]:
            out.append({"layer": 0, "point": [y, x], "label": label})
    elif tool == "flood_background":
        for label, (y, x) in cells["missing"][:4]:
            out.append({"layer": 0, "point": [y, x], "label": 999_999})
    elif tool == "trim":
        for label, (y, x) in cells["strayed"]:
            out.append({"layer": 0, "point": [y, x]})
    elif tool == "threshold":
        for label, (y, x) in cells["missing"]:
            for dy, dx, r in ((0, 0, 16), (-2, 1, 15), (1, -2, 18)):  # a few drags per cell
                if inside(y, x, 20):
                    out.append({"layer": 0, "box": [y + dy - r, x + dx - r, y + dy + r + 1, x + dx + r + 1],
                                "channel": 0})
    else:
        for label, (y, x) in cells["plain"]:
            if not inside(y, x, 20):
                continue
            if tool in ("paint", "erase"):
                xs = np.linspace(x - 15, x + 15, 8).round().astype(int)
                ys = (y + 3 * np.sin(np.linspace(0, 3, 8))).round().astype(int)
                p = {"layer": 0, "points": np.stack([ys, xs], 1).tolist(), "radius": 4}
                if tool == "paint":
                    p["label"] = label
                out.append(p)
            elif tool in ("merge", "swap"):
                other = neighbour_of(labels, y, x)
                if other and other != label:
                    out.append({"layer": 0, "a": label, "b": other})
            elif tool == "delete":
                out.append({"layer": 0, "label": label})
            elif tool in ("grow", "shrink"):
                out.append({"layer": 0, "label": label, "n": 2})
            elif tool == "split":
                # a cell drawn over two: cut along its shape (no channel)
                out.append({"layer": 0, "seeds": [[y, x - 5], [y, x + 5]]})
            elif tool == "autofit":
                out.append({"layer": 0, "label": label, "channel": 1, "margin": 3})
    return out


# ---- the naive way: the same edit recomputed over the whole array, whole array returned ----

def naive(tool, labels, image, p):
    out = labels.copy()
    layer = labels[..., 0]
    h, w = layer.shape
    if tool in ("paint", "erase"):
        yy, xx = np.ogrid[:h, :w]
        brush = np.zeros((h, w), bool)
        pts = np.asarray(p["points"], float)
        for a, b in zip(pts[:-1], pts[1:]):
            d = b - a
            t = np.clip(((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
            brush |= (yy - a[0] - t * d[0]) ** 2 + (xx - a[1] - t * d[1]) ** 2 <= p["radius"] ** 2 + 1e-9
        if tool == "paint":
            out[..., 0] = np.where(brush & ((layer == 0) | (layer == p["label"])), p["label"], layer)
        else:
            out[..., 0] = np.where(brush, 0, layer)
    elif tool in ("flood", "flood_background"):
        out[..., 0] = np.where(sk_flood(layer, tuple(p["point"]), connectivity=1), p["label"], layer)
    elif tool == "merge":
        out[..., 0] = np.where(layer == p["b"], p["a"], layer)
    elif tool == "swap":
        out[..., 0] = np.where(layer == p["a"], p["b"], np.where(layer == p["b"], p["a"], layer))
    elif tool == "delete":
        out[..., 0] = np.where(layer == p["label"], 0, layer)
    elif tool == "grow":
        cell = layer == p["label"]
        near = ndimage.distance_transform_edt(~cell) <= p["n"]
        pieces, _ = ndimage.label(near & ((layer == 0) | cell), FOUR)
        attached = np.unique(pieces[cell])
        out[..., 0] = np.where(np.isin(pieces, attached[attached > 0]) & (layer == 0), p["label"], layer)
    elif tool == "shrink":
        cell = layer == p["label"]
        depth = ndimage.distance_transform_edt(np.pad(cell, p["n"], constant_values=True))
        depth = depth[p["n"]:-p["n"], p["n"]:-p["n"]]
        out[..., 0] = np.where(cell & (depth <= p["n"]), 0, layer)
    elif tool == "trim":
        label = layer[tuple(p["point"])]
        cell = layer == label
        pieces, _ = ndimage.label(cell, EIGHT)
        out[..., 0] = np.where(cell & (pieces != pieces[tuple(p["point"])]), 0, layer)
    elif tool == "split":
        label = layer[tuple(p["seeds"][0])]
        cell = layer == label
        markers = np.zeros((h, w), np.int32)
        for k, (y, x) in enumerate(p["seeds"]):
            markers[y, x] = k + 1
        parts = watershed(-ndimage.distance_transform_edt(cell), markers, mask=cell)
        fresh = next_label_id(labels)
        out[..., 0] = np.where(parts == 2, fresh, layer)
    elif tool == "threshold":
        y0, x0, y1, x1 = p["box"]
        values = image[y0:y1, x0:x1, p["channel"]].astype(np.float64)
        full = np.zeros((h, w), bool)
        full[y0:y1, x0:x1] = values > threshold_otsu(values)
        pieces, _ = ndimage.label(full & (layer == 0), FOUR)
        biggest = int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
        out[..., 0] = np.where(pieces == biggest, next_label_id(labels), layer)
    elif tool == "autofit":
        cell = layer == p["label"]
        allowed = cell | (layer == 0)
        region = allowed & (ndimage.distance_transform_edt(~cell) <= p["margin"])
        depth = ndimage.distance_transform_edt(cell)
        markers = np.where(allowed & ~region, 2, 0).astype(np.int32)
        markers[depth > p["margin"]] = 1
        gradient = sobel(ndimage.gaussian_filter(image[..., p["channel"]].astype(np.float64), 1.0))
        fitted = watershed(gradient, markers, mask=allowed) == 1
        new = layer.copy()
        new[region & cell & ~fitted] = 0
        new[region & ~cell & fitted] = p["label"]
        out[..., 0] = new
    else:
        raise ValueError(tool)
    return out


def timed(fn, n):
    times = []
    result = None
    for i in range(n):
        start = time.perf_counter()
        result = fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times), result


TOOLS = ("paint", "erase", "flood", "flood_background", "merge", "swap", "delete", "split",
         "threshold", "autofit", "grow", "shrink", "trim")
# whole-array versions of these take seconds at 2048; a few repetitions say enough
SLOW_BASELINE = {"split": 3, "autofit": 3, "grow": 5, "shrink": 5, "flood_background": 3}


def run_size(size, reps, baseline_reps, rng):
    labels, image, cells = make_tissue(size, rng)
    start = time.perf_counter()
    index = LabelIndex.build(labels)
    build_ms = (time.perf_counter() - start) * 1000
    n_cells = len(index.boxes[0])
    for tool in TOOLS:
        cases = requests(tool, labels, cells)
        if not cases:
            continue
        tool_name = "flood" if tool == "flood_background" else tool
        n = min(reps, len(cases)) if tool != "flood_background" else min(3, len(cases))
        apply_edit(labels, image, tool_name, cases[0], index)  # warm caches and imports
        times, _ = timed(lambda i: apply_edit(labels, image, tool_name, cases[i], index), n)
        # the same edits from a caller that keeps no index (label boxes found by a scan)
        bare_times, _ = timed(lambda i: apply_edit(labels, image, tool_name, cases[i]), n)
        patches = [apply_edit(labels, image, tool_name, c, index) for c in cases[:n]]
        nb = min(n, SLOW_BASELINE.get(tool, baseline_reps) if size > 512 else baseline_reps)
        base_times, _ = timed(lambda i: naive(tool, labels, image, cases[i]), nb)
        agree = all(np.array_equal(patches[i].apply(labels.copy()), naive(tool, labels, image, cases[i]))
                    for i in range(min(nb, 3)))
        commit_times = []
        for patch in patches:
            # what the API does after an edit: apply in place, keep the index in step, encode
            saved = index.copy()
            start = time.perf_counter()
            patch.apply(labels)
            index.update(patch, labels)
            patch.to_bytes()
            commit_times.append((time.perf_counter() - start) * 1000)
            patch.inverse().apply(labels)
            index = saved
        patch_bytes = int(np.median([len(p.to_bytes()) for p in patches]))
        median, base = float(np.median(times)), float(np.median(base_times))
        print(json.dumps({
            "bench": "edits", "case": f"{tool}@{size}",
            "median_ms": round(median, 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
            "n": int(n), "no_index_median_ms": round(float(np.median(bare_times)), 3),
            "baseline_median_ms": round(base, 3), "baseline_n": int(nb),
            "speedup": round(base / median, 1) if median > 0 else None, "agree": bool(agree),
            "median_patch_px": int(np.median([p.before.size for p in patches])),
            "median_patch_bytes": patch_bytes,
            "commit_median_ms": round(float(np.median(commit_times)), 3),
            "cells": n_cells, "index_build_ms": round(build_ms, 1),
        }), flush=True)


def run_assist(size, reps, rng):
    """Latency of the assist tools on the same tissue, with maps from its true labels."""
    from pipeline.model.maps import maps_from_labels

    labels, image, cells = make_tissue(size, rng)
    truth = labels.copy()
    yy, xx = np.mgrid[:size, :size]
    for label, (y, x) in cells["missing"]:
        y0, y1, x0, x1 = max(y - 12, 0), min(y + 13, size), max(x - 12, 0), min(x + 13, size)
        disc = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= CELL_RADIUS ** 2
        window = truth[y0:y1, x0:x1, 0]
        window[disc & (window == 0)] = label
    maps = maps_from_labels(truth)
    index = LabelIndex.build(labels)
    half = CELL_SPACING
    cases = {
        "assist_click": [{"layer": 0, "point": [y, x]} for _, (y, x) in cells["missing"]],
        "assist_box": [{"layer": 0, "box": [y - half, x - half, y + half, x + half], "sensitivity": 0.5}
                       for _, (y, x) in cells["plain"] if half <= y < size - half and half <= x < size - half],
    }
    for tool, params in cases.items():
        n = min(reps, len(params))
        apply_edit(labels, image, tool, params[0], index, maps=maps)  # warm caches and imports
        times, _ = timed(lambda i: apply_edit(labels, image, tool, params[i], index, maps=maps), n)
        bare_times, _ = timed(lambda i: apply_edit(labels, image, tool, params[i], maps=maps), n)
        patches = [apply_edit(labels, image, tool, p, index, maps=maps) for p in params[:n]]
        print(json.dumps({
            "bench": "edits", "case": f"{tool}@{size}",
            "median_ms": round(float(np.median(times)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
            "n": int(n), "no_index_median_ms": round(float(np.median(bare_times)), 3),
            "median_patch_px": int(np.median([p.before.size for p in patches])),
            "cells": len(index.boxes[0]), "maps": "training targets of the true labels",
        }), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions")
    args = parser.parse_args(argv)
    reps, baseline_reps = (5, 2) if args.quick else (50, 10)
    rng = np.random.default_rng(20261126)
    for size in (2048, 270):
        run_size(size, reps, baseline_reps, rng)
    for size in (2048, 270):
        run_assist(size, reps, rng)


if __name__ == "__main__":
    main()
